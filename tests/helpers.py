"""What several test modules share: small image folders, running the CLI in-process, a
simulated crash, and comparing networks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnetlab.checkpoints.state import STATE_FILE
from resnetlab.cli import main
from resnetlab.training import run


def make_folder(root: Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Two learnable classes: horizontal vs vertical stripes, with noise."""
    rng = np.random.default_rng(seed)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            stripes = (np.arange(size) // 2 % 2 * 180).astype(np.uint8)
            image = np.repeat(
                stripes[:, None] if axis == 0 else stripes[None, :], size, axis=1 - axis
            )
            noisy = np.clip(image + rng.integers(0, 60, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([noisy] * 3, axis=-1)).save(folder / f"{i:03d}.png")
    return root


SQUARE_COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 230),
    "yellow": (230, 230, 30),
    "magenta": (220, 30, 220),
}


def make_squares(
    root: Path, per_class: int, size: int = 32, side: int = 12, seed: int = 0
) -> dict[Path, tuple[int, int, int]]:
    """Five classes in which only a square decides: a ``side`` x ``side`` square of the class's
    colour at a random place on grey noise. Returns each file's square (top, left, side)."""
    rng = np.random.default_rng(seed)
    squares = {}
    for name, colour in SQUARE_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
            image = np.repeat(grey, 3, axis=2)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            image[top : top + side, left : left + side] = colour
            path = root / name / f"{i:03d}.png"
            Image.fromarray(image).save(path)
            squares[path] = (top, left, side)
    return squares


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``resnetlab ARGV`` in-process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit status 2 and a single ``resnetlab: error:`` line holding every needle."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnetlab: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def crash_after_state(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Make the next run in this process die right after it saves the state at ``at_step``."""
    save = run.save_training_state

    def save_then_crash(t: run.Training, tally: object) -> None:
        save(t, tally)
        if t.steps_done == at_step:
            raise MemoryError("simulated crash")

    monkeypatch.setattr(run, "save_training_state", save_then_crash)


def shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    """State-dict keys with their shapes, in order."""
    return [(key, value.shape) for key, value in model.state_dict().items()]


def randomize_batch_norms(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)


def wait_for_state(run_dir: Path, process: subprocess.Popen[bytes], newer_than: float) -> bool:
    """Wait until the run has saved a state after ``newer_than``; False if it ended first."""
    state = run_dir / STATE_FILE
    while process.poll() is None:
        if state.exists() and state.stat().st_mtime > newer_than:
            return True
        time.sleep(0.02)
    return False


def wait_into_next_save(
    run_dir: Path, process: subprocess.Popen[bytes], rng: random.Random
) -> bool:
    """Wait for the run's next state save, then a random share of the time it took: a random
    point of the interval between two saves, on a fast machine as on a slow one. False if the
    run ended first."""
    seen = time.time()
    if not wait_for_state(run_dir, process, newer_than=seen):
        return False
    time.sleep(rng.uniform(0.0, time.time() - seen))
    return True


def signal_torchrun(launcher: subprocess.Popen[bytes], number: signal.Signals) -> None:
    """Send signal ``number`` to a torchrun launcher started in a session of its own, and to
    its workers, which torchrun starts each in a session of its own too."""
    workers = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent(entry) == launcher.pid
    ]
    for pid in (launcher.pid, *workers):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(pid, number)


def _parent(process: Path) -> int | None:
    """The parent's pid of the process in /proc/<pid> (None: it ended meanwhile)."""
    try:
        return int((process / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
