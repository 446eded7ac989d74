"""Exact resume on a real image folder: kill training with SIGKILL at a random step, resume it,
and compare its fingerprint (checkpoint sha256s, metrics without timings) with a run that never
stopped. The trials are shared by the in-memory cached path and the streaming path with
DataLoader workers (forced with --cache-mem 0), or go to the one `--pipelines` names.

    python benchmarks/resume_exactness.py --data ../shared/data/cifar10/train
    python benchmarks/resume_exactness.py --data DIR --smoke    # one kill, cached path, 4 steps

Prints a table and writes benchmarks/results/resume_exactness.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import smoke

from resnetlab.checkpoints.state import STATE_FILE
from resnetlab.training.rundir import fingerprint

PIPELINES = {"cached": [], "streaming": ["--cache-mem", "0", "--workers", "2"]}


def run(argv: list[str], where: Path, kill_after: float | None = None) -> tuple[bool, float]:
    """Run ``resnetlab ARGV`` in ``where``; with ``kill_after``, SIGKILL it that many seconds
    after it first saves its state. Whether it was killed, and the seconds from its first saved
    state to its end."""
    with (where / "output.txt").open("ab") as log:
        command = [sys.executable, "-m", "resnetlab", *argv]
        process = subprocess.Popen(command, cwd=where, stdout=log, stderr=subprocess.STDOUT)
        state = where / "run" / STATE_FILE
        while process.poll() is None and not state.exists():
            time.sleep(0.05)
        saved = time.perf_counter()
        if kill_after is not None and process.poll() is None:
            time.sleep(kill_after)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True, time.perf_counter() - saved
        if process.wait() != 0:
            raise SystemExit(f"{' '.join(argv)} failed: see {where / 'output.txt'}")
    return False, time.perf_counter() - saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image folder, e.g. CIFAR-10's")
    parser.add_argument(
        "--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES),
        help="the paths to kill (default: both)",
    )  # fmt: skip
    parser.add_argument("--trials", type=int, default=20, help="kills in all (shared by paths)")
    parser.add_argument("--limit-steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/resume_exactness.json")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "pipelines": ["cached"], "trials": 1, "limit_steps": 4, "save_every": 1,
            "out": str(folder / "resume_exactness.json"),
        },
    )  # fmt: skip
    recipe = [
        "train", "--data", str(Path(args.data).resolve()), "--recipe", "fast", "--epochs", "2",
        "--limit-steps", str(args.limit_steps), "--save-every", str(args.save_every),
        "--val-fraction", "0.02", "--quiet", "--out", "run",
    ]  # fmt: skip
    rng = random.Random(args.seed)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="resume-exactness-"))  # kept: each run's output
    print(f"runs in {scratch}", flush=True)
    trials = args.trials // len(args.pipelines)
    for name in args.pipelines:
        flags = PIPELINES[name]
        reference = scratch / f"{name}-reference"
        reference.mkdir()
        started = time.perf_counter()
        _, after_save = run([*recipe, *flags], reference)
        seconds = time.perf_counter() - started
        expected = fingerprint(reference / "run")
        matched = killed = 0
        for trial in range(trials):
            where = scratch / f"{name}-{trial}"
            where.mkdir()
            kill_after = rng.uniform(0, after_save)  # a random point after the first save
            killed += run([*recipe, *flags], where, kill_after=kill_after)[0]
            run(["train", "--resume", "run"], where)
            matched += fingerprint(where / "run") == expected
        rows.append({"pipeline": name, "trials": trials, "killed": killed,
                     "matched": matched, "reference_s": round(seconds, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    result = {"machine": platform.processor() or platform.machine(), "rows": rows, **vars(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    total = sum(r["matched"] for r in rows)
    print(f"{total} of {sum(r['trials'] for r in rows)} resumed runs matched bit for bit")


if __name__ == "__main__":
    main()
