"""Load pretrained weights from any ResNet source into our models, adapting head and stem.

A new class count re-initialises the classifier; a new input-channel count adapts the stem
(as timm's ``adapt_input_conv``); any other difference is an error that lists the keys at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.checkpoints.checkpoint import load_checkpoint
from resnetlab.checkpoints.state_dicts import WeightsFile, infer_model
from resnetlab.config.train import check_preprocessing_flags
from resnetlab.errors import ResnetlabError
from resnetlab.models import classifier_prefix, create_model

_LISTED = 5  # keys named per category in an error message before "and N more"


@dataclass
class LoadReport:
    """What ``load_weights`` did, key by key, for a one-line summary."""

    source: str
    sha256: str
    model: str
    inferred_model: bool
    matched: list[str]
    adapted: list[str]
    reinitialised: list[str]
    header: dict[str, Any] | None  # resnetlab header (classes, preprocessing) if the file had one
    reasons: dict[str, str] = field(default_factory=dict)  # why each adapted/re-initialised key
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. an inferred shortcut

    def provenance(self) -> dict[str, str]:
        """Where the weights came from, for a checkpoint header: file name and sha256."""
        return {"file": Path(self.source).name, "sha256": self.sha256}

    def summary(self) -> str:
        """One line, e.g. "weights 'r18.pth' (sha256 1a2b3c4d) -> resnet18: 120 matched, ..."."""
        digest = f" (sha256 {self.sha256[:8]})" if self.sha256 else ""
        inferred = " (inferred)" if self.inferred_model else ""
        parts = [f"{len(self.matched)} matched"]
        if self.adapted:
            parts.append(f"{len(self.adapted)} adapted ({self._explain(self.adapted)})")
        if self.reinitialised:
            reinitialised = self._explain(self.reinitialised)
            parts.append(f"{len(self.reinitialised)} re-initialised ({reinitialised})")
        return f"weights '{self.source}'{digest} -> {self.model}{inferred}: {', '.join(parts)}"

    def _explain(self, keys: list[str]) -> str:
        """'a, b: reason; c: other reason', keys grouped by their reason."""
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.reasons[key], []).append(key)
        return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in groups.items())


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """Stem filters ``(out, C, *k)`` adapted to ``in_chans`` input channels.

    To 1 channel the C filters are summed, so a grayscale image gives exactly the activation the
    source gives on that image replicated to C channels. To N channels the filters repeat
    cyclically, scaled by C/N: when N is a multiple of C (e.g. 1 -> 3) that identity holds again
    for a grayscale image replicated to N channels; otherwise the summed response keeps its scale.
    """
    as_float = weight.float()
    if in_chans == 1:
        return as_float.sum(dim=1, keepdim=True).to(weight.dtype)
    source_chans = weight.shape[1]
    cyclic = torch.arange(in_chans) % source_chans
    return (as_float[:, cyclic] * (source_chans / in_chans)).to(weight.dtype)


def load_weights(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    *,
    source: str = "<memory>",
    model_name: str = "?",
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` and report what was matched, adapted, re-initialised.

    A classifier for another class count keeps the model's fresh init; convolutions of the input
    (the stem, and e.g. a 1-D net's first shortcut) for another channel count are adapted by
    ``adapt_input_channels``; any other missing, unexpected or mis-shaped key raises one line
    naming them.
    """
    target = model.state_dict()
    head = classifier_prefix(model)
    channels = _input_channels(target, state_dict)
    loaded: dict[str, Tensor] = {}
    report = LoadReport(source, "", model_name, False, [], [], [], None)
    missing: list[str] = []
    mis_shaped: list[str] = []
    for key, current in target.items():
        given = state_dict.get(key)
        if given is not None and given.shape == current.shape:
            loaded[key] = given
            report.matched.append(key)
        elif key.startswith(head) and _is_other_head(given, current):
            report.reinitialised.append(key)
            report.reasons[key] = (
                "not in weights"
                if given is None
                else f"{given.shape[0]}->{current.shape[0]} classes"
            )
        elif given is None:
            # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; keep ours.
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
        elif channels and _reads_input(given, current, channels):
            loaded[key] = adapt_input_channels(given, current.shape[1])
            report.adapted.append(key)
            report.reasons[key] = f"{given.shape[1]}->{current.shape[1]} channels"
        else:
            mis_shaped.append(f"{key}: {_shape(given)} in weights, {_shape(current)} in model")
    unexpected = [key for key in state_dict if key not in target]
    faults = {"missing": missing, "unexpected": unexpected, "mis-shaped": mis_shaped}
    if any(faults.values()):
        listed = "; ".join(_listing(label, keys) for label, keys in faults.items() if keys)
        raise ResnetlabError(
            f"{source}: weights do not fit model '{model_name}': {listed} (wrong --model?)"
        )
    model.load_state_dict({**target, **loaded})
    return report


def _is_other_head(given: Tensor | None, current: Tensor) -> bool:
    """Whether the classifier's tensor ``given`` is absent or sized for another class count."""
    return given is None or given.shape[1:] == current.shape[1:]


def _input_channels(
    target: dict[str, Tensor], state_dict: dict[str, Tensor]
) -> tuple[int, int] | None:
    """``(weights', model's)`` input channels, read at the model's first layer if it is a conv."""
    stem_key, stem = next(iter(target.items()))
    given = state_dict.get(stem_key)
    if stem.dim() < 3 or given is None or given.dim() != stem.dim():
        return None
    return given.shape[1], stem.shape[1]


def _reads_input(given: Tensor, current: Tensor, channels: tuple[int, int]) -> bool:
    """A conv whose shapes differ only in input channels, from the weights' count to the model's."""
    return (
        given.dim() == current.dim() >= 3
        and (given.shape[1], current.shape[1]) == channels
        and given.shape[:1] + given.shape[2:] == current.shape[:1] + current.shape[2:]
    )


def _shape(tensor: Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _listing(label: str, keys: list[str]) -> str:
    """'missing 42 (a, b, c, d, e and 37 more)'."""
    shown = ", ".join(keys[:_LISTED])
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"{label} {len(keys)} ({shown}{more})"


def load_pretrained(
    weights: WeightsFile,
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **model_options: Any,
) -> tuple[nn.Module, LoadReport]:
    """Build a model for ``weights`` (see ``read_weights``) and load them.

    The architecture is ``model_name``, else the resnetlab header's, else inferred from the keys;
    ``num_classes``/``in_chans`` default to the source's, and differing ones adapt head/stem.
    """
    state_dict, header = weights.state_dict, weights.header
    header_model = header.get("model") if header else None
    inferred = model_name is None and header_model is None
    if inferred:
        model_name, options = infer_model(state_dict)
    else:
        model_name = model_name or header_model
        options = header.get("model_options", {}) if header and header_model == model_name else {}
    options = {**options, **model_options}
    source_classes, source_chans = _source_dims(state_dict, header, model_name, options)
    model = create_model(
        model_name,
        num_classes=source_classes if num_classes is None else num_classes,
        in_chans=source_chans if in_chans is None else in_chans,
        **options,
    )
    report = load_weights(model, state_dict, source=weights.path, model_name=model_name)
    return model, replace(
        report,
        sha256=weights.sha256,
        inferred_model=inferred,
        header=header,
        model_options=options,
    )


def _source_dims(
    state_dict: dict[str, Tensor], header: dict[str, Any] | None, name: str, options: dict[str, Any]
) -> tuple[int | None, int | None]:
    """The source's class and input-channel counts: from its header, else from the shapes at
    the model's classifier and first layer (found on a meta-device build: no memory used)."""
    if header:
        return header.get("num_classes"), header.get("in_chans")
    with torch.device("meta"):
        meta = create_model(name, **options)
    first_key = next(iter(meta.state_dict()))
    head = state_dict.get(f"{classifier_prefix(meta)}weight")
    first = state_dict.get(first_key)
    return (
        None if head is None else head.shape[0],
        None if first is None or first.dim() < 2 else first.shape[1],
    )


def model_for_header(header: dict[str, Any]) -> nn.Module:
    """The untrained network that a checkpoint header describes (architecture, options,
    classes, input channels)."""
    return create_model(
        header["model"],
        num_classes=header["num_classes"],
        in_chans=header["in_chans"],
        **header["model_options"],
    )


def model_from_checkpoint(
    path: str | Path, expect_model: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights (``checkpoint_network``)."""
    state, header = load_checkpoint(path)
    name = header["model"]
    if expect_model is not None and expect_model != name:
        raise ResnetlabError(
            f"--checkpoint '{path}' holds a {name} model, not --model {expect_model}"
        )
    return checkpoint_network(state, header, str(path)), header


def checkpoint_network(state: dict[str, Tensor], header: dict[str, Any], source: str) -> nn.Module:
    """The network a checkpoint's header describes, with the checkpoint's ``state`` loaded:
    every tensor must fit (BatchNorm step counters aside, which a run with FrozenBatchNorm2d
    layers does not save)."""
    name = header["model"]
    model = model_for_header(header)
    report = load_weights(model, state, source=source, model_name=name)
    misfits = report.adapted + report.reinitialised
    if misfits:
        raise ResnetlabError(
            f"{source}: weights do not fit the header's {name}: "
            + "; ".join(f"{key} ({report.reasons[key]})" for key in misfits)
        )
    return model


@dataclass(frozen=True)
class Preprocessing:
    """How the source model's inputs were prepared: per-channel mean/std and square input size,
    from ``--mean``/``--std``/``--input-size``, else its resnetlab header; None where unknown."""

    mean: list[float] | None = None
    std: list[float] | None = None
    input_size: int | None = None
    from_header: bool = False

    def normalisation(self, chans: int) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` for ``chans`` input channels, or None if unknown. A single value
        repeats; a header's statistics for another channel count (the stem is then adapted,
        see ``adapt_input_channels``) are averaged over its channels."""
        if self.mean is None or self.std is None:
            return None
        if len(self.mean) == chans:
            return list(self.mean), list(self.std)
        if len(self.mean) != 1 and not self.from_header:
            raise ResnetlabError(
                f"--mean/--std give {len(self.mean)} values, but the data has {chans} channels"
            )
        return [sum(self.mean) / len(self.mean)] * chans, [sum(self.std) / len(self.std)] * chans


def source_preprocessing(
    weights: WeightsFile,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    input_size: int | None = None,
) -> Preprocessing:
    """The preprocessing ``weights`` expect: the flags where given, else what their resnetlab
    header records (foreign weights carry none)."""
    check_preprocessing_flags(mean, std, input_size)
    header = weights.header or {}
    if input_size is None and header.get("data_kind") == "image":
        input_size = header["input_shape"][-1]
    if mean is None and "mean" in header:
        return Preprocessing(header["mean"], header["std"], input_size, from_header=True)
    return Preprocessing(mean, std, input_size)
