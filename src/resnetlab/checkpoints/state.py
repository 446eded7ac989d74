"""A run's training state: everything that continuing it needs, written atomically.

The state is one ``torch.save`` file of tensors and plain containers (no pickled objects), read
back with ``torch.load(weights_only=True)``, so that loading it can never run code. It is
written to a temporary file in the run folder, flushed and fsynced, then renamed over the old
one: a crash at any instant leaves either the old state or the new one.
"""

from __future__ import annotations

import random
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically

STATE_FILE = "state.pt"
STATE_FORMAT = 1
# What a training run writes (``save_training_state``, training/run.py) and a resumed run reads
# (besides "format"; "ran_as", the device and precision, is read where a state has it).
STATE_KEYS = frozenset(
    {
        "command", "config", "resolved", "header", "model", "optimizer", "scaler",
        "phase", "phase_start_step", "epoch", "steps_done", "tally", "best_score", "best_epoch",
        "bad_epochs", "skipped_steps", "history", "elapsed_s", "threads", "world", "rng",
    }
)  # fmt: skip


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every global random stream a run on ``device`` draws from: Python's, NumPy's, torch's
    on the CPU and, on a GPU, that GPU's (None on a CPU)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": position,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back the streams that ``capture_rng`` saved, on a run on ``device``: a GPU's stream
    goes to this run's GPU, whatever the number of GPUs here, and none to a run on the CPU."""
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if device.type != "cuda":
        return
    cuda = state["cuda"]
    if isinstance(cuda, list):  # an older state: every visible GPU's, in index order
        index = torch.cuda.current_device() if device.index is None else device.index
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants the tuples that a round trip may have turned into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically and durably (temporary file, fsync, rename).

    A failed write (a full disk, a folder that became unwritable) raises a one-line
    ``ResnetlabError`` naming the file; the previous state at ``path`` is left as it was.
    """
    write_atomically(
        Path(path), partial(torch.save, {"format": STATE_FORMAT, **state}), "the training state"
    )


def load_state(path: str | Path, required: frozenset[str] = STATE_KEYS) -> dict[str, Any]:
    """Read a state written by ``save_state`` that holds the ``required`` keys (a training
    run's by default); a missing, truncated, corrupted or foreign file is a one-line
    ``ResnetlabError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"--resume: no training state at '{path}'")
    unreadable = f"--resume: '{path}' is not a readable training state"
    _check_archive(path, unreadable)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load reports a damaged file with many exception types
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResnetlabError(f"{unreadable} ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResnetlabError(
            f"--resume: '{path}' is not a resnetlab training state (format {STATE_FORMAT})"
        )
    missing = sorted(required - state.keys())
    if missing:
        raise ResnetlabError(
            f"--resume: '{path}' is not a whole resnetlab training state (no {', '.join(missing)})"
        )
    return state


def _check_archive(path: Path, unreadable: str) -> None:
    """``torch.save`` writes a zip archive with a CRC-32 per entry, which ``torch.load`` does
    not check: a truncated, damaged or foreign file is refused here, before it is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception:  # zipfile reports a damaged archive with many exception types
        raise ResnetlabError(
            f"{unreadable} (truncated, damaged or not a torch.save file)"
        ) from None
    if damaged is not None:
        raise ResnetlabError(f"{unreadable} (damaged: '{damaged}' fails its checksum)")
