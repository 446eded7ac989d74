"""Model complexity: parameter and multiply-add counts, a per-name summary and the table of
every model (`resnetlab models`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.errors import ResnetlabError
from resnetlab.models.registry import create_model, get_model_spec, list_models

_UNITS = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3))


@dataclass(frozen=True)
class ModelSummary:
    """Size and cost of one registered model at its default input."""

    name: str
    family: str
    params: int
    macs: int  # multiply-adds for one sample
    input_shape: tuple[int, ...]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one sample of ``input_shape`` (no batch dimension).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) in eval mode without
    gradients; convolutions and matrix products count, normalisation, activations and pooling
    do not. The input is created on the model's device, so a model on the "meta" device is
    counted without computing anything.
    """
    weight = next(model.parameters())
    sample = torch.zeros(1, *input_shape, dtype=weight.dtype, device=weight.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(sample)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def summarize(name: str) -> ModelSummary:
    """Parameters and multiply-adds of model ``name`` at its registry defaults.

    The model is built on the "meta" device: no memory for weights, no arithmetic.
    """
    spec = get_model_spec(name)
    with torch.device("meta"):
        model = create_model(name)
    return ModelSummary(
        name=name,
        family=spec.family,
        params=count_parameters(model),
        macs=count_macs(model, spec.input_shape),
        input_shape=spec.input_shape,
    )


def format_count(n: float) -> str:
    """A human-readable count with 3 significant digits: 11689512 -> "11.7M", 1.814e9 -> "1.81G"."""
    rounded = float(f"{n:.3g}")
    for unit, scale in _UNITS:
        if abs(rounded) >= scale:
            return f"{rounded / scale:.3g}{unit}"
    return f"{rounded:.3g}"


def model_table(family: str | None = None) -> list[dict[str, Any]]:
    """Name, family, parameters and multiply-adds at the default input, for each model."""
    names = list_models(family)
    if not names:
        families = sorted({get_model_spec(n).family for n in list_models()})
        raise ResnetlabError(
            f"--family: unknown family {family!r} (choose from {', '.join(families)})"
        )
    rows = []
    for name in names:
        s = summarize(name)
        rows.append(
            {
                "name": s.name,
                "family": s.family,
                "params": s.params,
                "macs": s.macs,
                "params_human": format_count(s.params),
                "macs_human": format_count(s.macs),
                "input_shape": list(s.input_shape),
            }
        )
    return rows
