"""Self-describing checkpoints: safetensors weights plus a JSON header, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically

HEADER_KEY = "resnetlab"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], header: dict[str, Any]
) -> None:
    """Write ``state_dict`` and ``header`` to ``path`` via a temporary file and an atomic rename.

    A crash mid-write leaves any earlier file at ``path`` intact; a failed write (a full disk)
    is a one-line ``ResnetlabError`` naming the file.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    # One metadata key: safetensors keeps metadata in a hash map whose order varies from one
    # process to the next, and the same checkpoint must be the same bytes (see checkpoints.state).
    metadata = {HEADER_KEY: json.dumps({"version": FORMAT_VERSION, **header})}
    # Serialised here and written by Python, whose OSError names a full disk (safetensors'
    # own file writer reports it as a SafetensorError).
    data = save(tensors, metadata=metadata)
    write_atomically(Path(path), lambda f: f.write(data), "the checkpoint")


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The resnetlab header of a safetensors file, read without its tensors (None: it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ResnetlabError(f"{path}: not a readable safetensors file ({exc})") from None
    return _resnetlab_header(metadata)


def load_safetensors(
    data: bytes, source: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors, resnetlab header or None)`` of a safetensors file's bytes; ``source`` names
    the file in the error a damaged one raises."""
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise ResnetlabError(f"{source}: not a readable safetensors file ({exc})") from None
    # The layout: an 8-byte little-endian header length, then the JSON header.
    length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    return tensors, _resnetlab_header(metadata)


def _resnetlab_header(metadata: dict[str, str]) -> dict[str, Any] | None:
    raw = metadata.get(HEADER_KEY)
    return json.loads(raw) if raw else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a resnetlab checkpoint, opening it once: ``(state_dict, header)``."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"--checkpoint: no such file: '{path}'")
    data = path.read_bytes()
    if data.startswith(b"PK\x03\x04"):  # a zip archive: what torch.save writes
        raise ResnetlabError(
            f"{path}: a torch.save file (a run's training state?), not a resnetlab checkpoint; "
            "a run's checkpoints are its best.safetensors and last.safetensors"
        )
    state_dict, header = load_safetensors(data, path)
    if header is None:
        raise ResnetlabError(f"{path}: not a resnetlab checkpoint (no '{HEADER_KEY}' header)")
    return state_dict, header
