"""Detector checkpoints: safetensors with the ``DetectorSpec`` in the header, and the
detector built back from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from resnetlab.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.detection.model import DetectorSpec, build_detector
from resnetlab.errors import ResnetlabError

KIND = "detector"


def save_detector(
    path: Path, model: nn.Module, spec: dict[str, Any], extra: dict[str, Any]
) -> None:
    """``model``'s weights, with ``{"kind": "detector", "detector": spec, **extra}``."""
    save_checkpoint(path, model.state_dict(), {"kind": KIND, "detector": spec, **extra})


def _read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state, header = load_checkpoint(path)
    if header.get("kind") != KIND:
        raise ResnetlabError(
            f"--checkpoint '{path}': a classifier's checkpoint, not one of `detect train`"
        )
    return state, header


def load_detector_state(path: str | Path) -> dict[str, Tensor]:
    """The weights of a detector checkpoint."""
    return _read(path)[0]


def load_detector(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The detector a checkpoint describes, its weights loaded, in eval mode; and its header."""
    state, header = _read(path)
    spec = DetectorSpec(**header["detector"])
    model = build_detector(spec)
    model.load_state_dict(state)
    return model.eval(), header
