"""A run's training state: everything that continuing it needs, written atomically.

The state is one ``torch.save`` file of tensors and plain containers (no pickled objects), read
back with ``torch.load(weights_only=True)``, so that loading it can never run code. It is
written to a temporary file in the run folder, flushed and fsynced, then renamed over the old
one: a crash at any instant leaves either the old state or the new one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetlab.errors import ResnetlabError

STATE_FILE = "state.pt"
STATE_FORMAT = 1


def capture_rng() -> dict[str, Any]:
    """Every global random stream: Python's, NumPy's, torch's on the CPU and on each GPU."""
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
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the streams that ``capture_rng`` saved."""
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants the tuples that a round trip may have turned into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically and durably (temporary file, fsync, rename).

    A failed write (a full disk, a folder that became unwritable) raises a one-line
    ``ResnetlabError`` naming the file; the previous state at ``path`` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot write the training state ({_reason(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": STATE_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ResnetlabError(
            f"{path}: cannot write the training state ({_reason(exc)}); the previous state "
            "is intact"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by ``save_state``; a missing, truncated, corrupted or foreign
    file is a one-line ``ResnetlabError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"--resume: no training state at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load reports a damaged file with many exception types
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResnetlabError(
            f"--resume: '{path}' is not a readable training state ({first_line})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResnetlabError(
            f"--resume: '{path}' is not a resnetlab training state (format {STATE_FORMAT})"
        )
    return state
