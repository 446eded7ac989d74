"""Which folder a new run writes to: never one that holds an earlier run, unless asked.

A new run's ``--out`` may be absent, empty, or hold only files that no run writes. A folder
that holds any of ``RUN_FILES`` (a finished run, an interrupted one, or what a failed one left)
is refused with one line, before anything is written: it names ``--resume`` where a training
state could continue the run, and ``--overwrite``, which removes exactly those files first and
says so. A default folder, ``runs/<date-time>-<name>``, is claimed by creating it: a run started
in the same second, by this process or another, gets ``...-2``, ``...-3``.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path

from resnetlab.checkpoints.state import STATE_FILE
from resnetlab.errors import ResnetlabError
from resnetlab.files import WRITE_PROBE, os_reason
from resnetlab.runtime.distributed import World
from resnetlab.training.board import BOARD_FOLDER
from resnetlab.training.rundir import ReplicaRunDir, RunDir

# Every name that a run writes in its folder (a folder's name stands for all it holds).
RUN_FILES = (
    # every command (RunDir)
    "log.txt", "config.yaml", "metrics.jsonl", WRITE_PROBE,
    # train and finetune (training/run.py)
    STATE_FILE, "last.safetensors", "best.safetensors", "curves.png", "time_to_accuracy.png",
    "confusion.png", "confusion.json", "test_metrics.json", "baselines.json", BOARD_FOLDER,
    # lr-find
    "lr_find.png", "lr_find.json",
    # detect train
    "test.json", "predictions",
    # the experiments (beside their runs' own folders)
    "degradation.png", "degradation.md", "degradation.json",
    "gradients.png", "gradients.md", "gradients.json",
    "case_study.md", "case_study.json",
    "video.png", "video.md", "video.json",
)  # fmt: skip
# ... and the temporary file of an atomic write (``files.write_atomically``) that a crash left
_PATTERNS = (*RUN_FILES, *(f".{name}.*.tmp" for name in RUN_FILES))
# The reports that a run writes as it ends: with one, a run is finished even if its state is kept
FINAL_REPORTS = frozenset({"confusion.json", "test_metrics.json", "test.json", "lr_find.json"})


def run_name(label: str, data: str) -> str:
    """``<label>-<data name>``: a data path's file or folder name, else the built-in name."""
    data_name = Path(data).stem if os.sep in data or data.endswith(".csv") else data
    return f"{label}-{data_name}"


def open_run_dir(
    out: str | None,
    name: str,
    *,
    world: World | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    nested: bool = False,
) -> RunDir:
    """The run folder: ``resume``, or for a new run the one that ``claim_run_dir`` gives rank 0
    of ``world`` (default: one process; a default name holds rank 0's clock). A ``RunDir`` on
    rank 0, which first prints what ``overwrite`` removed, and a ``ReplicaRunDir`` on the
    other processes; a refused folder is the same one-line error on every process, so that
    all of them stop."""
    world = world or World()
    if resume and overwrite:
        raise ResnetlabError(
            f"--overwrite starts a new run and --resume {resume} continues one: give one of them"
        )

    def claim() -> tuple[str, str | None]:
        if resume:
            return resume, None
        path, note = claim_run_dir(out, name, overwrite=overwrite, nested=nested)
        return str(path), note

    path, note = world.on_main(claim)
    if not world.is_main:
        return ReplicaRunDir(path)
    run = RunDir(path)
    if note:
        run.print(note)
    return run


def claim_run_dir(
    out: str | None, name: str, *, overwrite: bool = False, nested: bool = False
) -> tuple[Path, str | None]:
    """The folder of a new run, and the line saying what ``overwrite`` removed from it (None:
    nothing). ``out`` (``nested``: an experiment's, whose runs have their own sub-folders)
    must hold no earlier run, unless ``overwrite``; without ``out``, a new default folder."""
    if out is None:
        return default_run_dir(name), None
    folder = Path(out)
    found = run_files(folder, nested=nested)
    if not found:
        return folder, None
    kind, details, resumable = _describe(folder, found)
    if not overwrite:
        resume = f"continue it with --resume {folder}, " if resumable else ""
        raise ResnetlabError(
            f"--out {folder} holds {kind} ({details}): {resume}give another --out, or "
            "--overwrite to replace it"
        )
    removed = sum(_remove(entry) for entry in found)
    return folder, f"--overwrite: removed {kind} from {folder} ({details}; {removed} files)"


def default_run_dir(name: str) -> Path:
    """``runs/<date-time>-<name>``, created here so that no other run takes it: where it
    exists, ``...-2``, ``...-3`` and so on."""
    base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
    path, count = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            count += 1
            path = base.with_name(f"{base.name}-{count}")
        except OSError as exc:
            raise ResnetlabError(f"--out: cannot create '{path}': {os_reason(exc)}") from None


def run_files(folder: Path, *, nested: bool = False) -> list[Path]:
    """What runs wrote in ``folder``: the entries that ``RUN_FILES`` name and (``nested``)
    the sub-folders that hold a run's files."""
    if not folder.is_dir():
        return []
    return [
        entry
        for entry in sorted(folder.iterdir())
        if any(fnmatch(entry.name, pattern) for pattern in _PATTERNS)
        or (nested and _is_folder(entry) and run_files(entry))
    ]


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _describe(folder: Path, found: list[Path]) -> tuple[str, str, bool]:
    """What ``found`` (``folder``'s run files) is and its details, e.g. ``a finished run``
    and ``12 epochs, best.safetensors``, and whether a training state could continue it."""
    names = {entry.name for entry in found}
    epochs = _epochs(folder / "metrics.jsonl")
    counted = [f"{epochs} epoch{'' if epochs == 1 else 's'}"] if epochs else []
    if STATE_FILE in names and not names & FINAL_REPORTS:
        return "an interrupted run", ", ".join([*counted, STATE_FILE]), True
    outputs = sorted(names & {"best.safetensors", *FINAL_REPORTS})
    if outputs:
        return "a finished run", ", ".join([*counted, outputs[0]]), False
    shown = sorted(names)
    more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
    return "an earlier run", ", ".join(shown[:3]) + more, False


def _epochs(metrics: Path) -> int:
    """Epochs in a run's metrics.jsonl (0 where it cannot be read)."""
    try:
        return sum(1 for line in metrics.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


def _remove(entry: Path) -> int:
    """Remove a run's file or folder (a nested run's files, and its folder if then empty);
    return the number of files removed."""
    try:
        if not _is_folder(entry):
            entry.unlink()
            return 1
        if entry.name in RUN_FILES:
            count = sum(1 for path in entry.rglob("*") if not path.is_dir())
            shutil.rmtree(entry)
            return count
        count = sum(_remove(inner) for inner in run_files(entry))
        if not any(entry.iterdir()):
            entry.rmdir()
        return count
    except OSError as exc:
        raise ResnetlabError(f"--overwrite: cannot remove '{entry}': {os_reason(exc)}") from None
