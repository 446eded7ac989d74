"""Accuracy against wall-clock time for finished run folders, side by side: the README's
comparison figure, and each run's time to a few accuracies as JSON.

    .venv/bin/python benchmarks/time_to_accuracy.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] \
        [--out docs/figures/time_to_accuracy.png] [--smoke]

Each run's curve is its validation accuracy per epoch (metrics.jsonl, ``elapsed_s``), and its
star the final evaluation (confusion.json, flip TTA where the run asked for it) at the end of
the curve. Writes benchmarks/results/time_to_accuracy.json (`--json`); `--smoke` writes the
figure and the JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import smoke

from resnetlab.training.reports import plot_time_to_accuracy

THRESHOLDS = (88.0, 90.0, 92.0, 94.0)


def read_run(run_dir: Path) -> tuple[list[float], list[float], float]:
    """Minutes and validation accuracy per epoch, and the final evaluation's accuracy."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    minutes = [r["elapsed_s"] / 60 for r in records]
    accuracy = [r["val_acc"] for r in records]
    final = json.loads((run_dir / "confusion.json").read_text())["accuracy"]
    return minutes, accuracy, final


def minutes_to(minutes: list[float], accuracy: list[float], threshold: float) -> float | None:
    """The wall-clock minutes of the first epoch at ``threshold`` or above (None: never)."""
    return next((m for m, a in zip(minutes, accuracy, strict=True) if a >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--out", default="docs/figures/time_to_accuracy.png")
    parser.add_argument("--title", default="CIFAR-10 folder (JPEG), 5,000-image validation")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "time_to_accuracy.json"
    )
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "out": str(folder / "time_to_accuracy.png"), "json": folder / "time_to_accuracy.json"
        },
    )
    curves, results, summary = {}, {}, {}
    for item in args.runs:
        label, _, folder = item.partition("=")
        minutes, accuracy, final = read_run(Path(folder))
        curves[label] = (minutes, accuracy)
        results[label] = (minutes[-1], final)
        summary[label] = {
            "run": folder,
            "final_accuracy": final,
            "train_minutes": minutes[-1],
            **{f"minutes_to_{t:g}": minutes_to(minutes, accuracy, t) for t in THRESHOLDS},
        }
    plot_time_to_accuracy(curves, results, Path(args.out), args.title)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
