"""How far a reader must go to follow one training run: the source files of resnetlab outside
cli/ whose functions `resnetlab train` calls, and the lines of the modules that orchestrate it.

Each run goes in a new process under ``sys.settrace`` (every thread's, call events only):
`resnetlab train --data digits --epochs 1`, and a one-epoch run on a small generated image
folder. A file counts when a function of it is called; module and class bodies (what
importing runs) do not.

    python benchmarks/call_trace.py
    python benchmarks/call_trace.py --orchestration training/train.py training/run.py ...
    python benchmarks/call_trace.py --smoke    # a step of each run

Prints the counts and writes benchmarks/results/call_trace.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import smoke
from PIL import Image

import resnetlab

PACKAGE = Path(resnetlab.__file__).resolve().parent
# The modules that hold a run's sequence, from the command to the step (today's layout).
ORCHESTRATION = [
    "training/train.py", "training/run.py", "training/start.py", "training/phases.py",
    "training/step.py", "training/budget.py",
]  # fmt: skip


def called_files(argv: list[str]) -> list[str]:
    """``resnetlab ARGV``, in this process, traced: the package's files (relative to it,
    cli/ left out) in which a function was called."""
    from resnetlab.cli import main

    seen: set[str] = set()

    def on_call(frame: FrameType, event: str, _: Any) -> None:
        code = frame.f_code
        if code.co_flags & inspect.CO_OPTIMIZED:  # a function's body
            seen.add(code.co_filename)
        # None: no tracing inside the frame (only "call" events reach a global trace function)

    threading.settrace(on_call)
    sys.settrace(on_call)
    try:
        status = main(argv)
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    if status != 0:
        raise SystemExit(f"resnetlab {' '.join(argv)} failed ({status})")
    inside = (Path(name).resolve() for name in seen if name.endswith(".py"))
    files = {p.relative_to(PACKAGE).as_posix() for p in inside if p.is_relative_to(PACKAGE)}
    return sorted(name for name in files if not name.startswith("cli/"))


def traced(argv: list[str], folder: Path) -> list[str]:
    """``called_files(argv)`` in a new process, so that no earlier run's caches hide a call."""
    out = folder / "trace.json"
    command = [sys.executable, __file__, "--trace", json.dumps(argv), "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def stripes(root: Path, per_class: int, size: int) -> Path:
    """An image folder of two classes (horizontal and vertical stripes), PNGs."""
    rng = np.random.default_rng(0)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (root / name).mkdir(parents=True)
        lines = np.arange(size) // 2 % 2 * 180
        image = np.repeat(lines[:, None] if axis == 0 else lines[None, :], size, axis=1 - axis)
        for i in range(per_class):
            noisy = np.clip(image + rng.integers(0, 60, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([noisy] * 3, axis=-1)).save(root / name / f"{i:03d}.png")
    return root


def lines(files: list[str]) -> dict[str, int]:
    """Lines of each of ``files`` (relative to the package)."""
    return {name: len((PACKAGE / name).read_text().splitlines()) for name in files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="--limit-steps of each run")
    parser.add_argument("--per-class", type=int, default=64, help="images of the folder's classes")
    parser.add_argument(
        "--orchestration", nargs="+", default=ORCHESTRATION, dest="orchestration_modules",
        help="the modules whose lines count as the orchestration (default: today's)",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/call_trace.json")
    parser.add_argument("--trace", help=argparse.SUPPRESS)  # a child process: the run's argv
    args = smoke.parse_args(
        parser,
        lambda folder: {"steps": 1, "per_class": 4, "out": str(folder / "call_trace.json")},
    )
    if args.trace:
        Path(args.out).write_text(json.dumps(called_files(json.loads(args.trace))))
        return
    scratch = Path(tempfile.mkdtemp(prefix="call-trace-"))
    limit = [] if args.steps is None else ["--limit-steps", str(args.steps)]
    folder = stripes(scratch / "stripes", args.per_class, size=16)
    runs = {
        "digits": ["--data", "digits"],
        "image folder": ["--data", str(folder), "--cache-dir", str(scratch / "cache")],
    }
    rows = {}
    for name, data in runs.items():
        where = scratch / name.replace(" ", "-")
        where.mkdir()
        argv = ["train", *data, "--epochs", "1", *limit, "--quiet", "--out", str(where / "run")]
        files = traced(argv, where)
        rows[name] = {"argv": argv, "files": len(files), "called": files}
        print(f"{name}: functions called in {len(files)} files", flush=True)
    orchestration = lines(args.orchestration_modules)
    total = sum(orchestration.values())
    print(f"orchestration: {total} lines in {len(orchestration)} modules")
    result = {**vars(args), "runs": rows, "orchestration": orchestration, "lines": total}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
