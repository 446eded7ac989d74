"""Self-describing checkpoints: safetensors weights plus a JSON header, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model

HEADER_KEY = "resnetlab"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], header: dict[str, Any]
) -> None:
    """Write ``state_dict`` and ``header`` to ``path`` via a temporary file and an atomic rename.

    A crash mid-write leaves any earlier file at ``path`` intact.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"format": "pt", HEADER_KEY: json.dumps({"version": FORMAT_VERSION, **header})}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The resnetlab header of a safetensors file, or None if it has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ResnetlabError(f"{path}: not a readable safetensors file ({exc})") from None
    raw = metadata.get(HEADER_KEY)
    return json.loads(raw) if raw else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a resnetlab checkpoint: ``(state_dict, header)``."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"--checkpoint: no such file: '{path}'")
    header = read_header(path)
    if header is None:
        raise ResnetlabError(f"{path}: not a resnetlab checkpoint (no '{HEADER_KEY}' header)")
    return load_file(str(path)), header


def model_from_checkpoint(
    path: str | Path, expect_model: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights: every tensor must fit
    (BatchNorm step counters aside, which a run with FrozenBatchNorm2d layers does not save)."""
    from resnetlab.engine.weights import load_weights  # it imports this module

    state, header = load_checkpoint(path)
    name = header["model"]
    if expect_model is not None and expect_model != name:
        raise ResnetlabError(
            f"--checkpoint '{path}' holds a {name} model, not --model {expect_model}"
        )
    model = create_model(
        name,
        num_classes=header["num_classes"],
        in_chans=header["in_chans"],
        **header["model_options"],
    )
    report = load_weights(model, state, source=str(path), model_name=name)
    misfits = report.adapted + report.reinitialised
    if misfits:
        raise ResnetlabError(
            f"{path}: weights do not fit the header's {name}: "
            + "; ".join(f"{key} ({report.reasons[key]})" for key in misfits)
        )
    return model, header
