"""The standard set of `resnetlab bench`: resnet20, resnet56, resnet18 and resnet50, training and
inference, each in one process, side by side with the seed-style and user loops.

Prints the Markdown table the README shows and writes benchmarks/results/bench_standard.json:
    .venv/bin/python benchmarks/bench_standard.py [--models resnet20 resnet50] [--rounds 3]
    .venv/bin/python benchmarks/bench_standard.py --smoke   # resnet20 training, 8x8, eager
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import smoke

from resnetlab.bench.measure import BenchConfig, bench

# (model, mode) -> batch and input size; resnet50 trains at batch 16 (its memory on a laptop)
STANDARD = {
    ("resnet20", "train"): (128, 32),
    ("resnet20", "infer"): (32, 32),
    ("resnet56", "train"): (128, 32),
    ("resnet56", "infer"): (32, 32),
    ("resnet18", "train"): (16, 224),
    ("resnet18", "infer"): (32, 224),
    ("resnet50", "train"): (16, 224),
    ("resnet50", "infer"): (32, 224),
}


def markdown(results: list[dict]) -> str:
    """One table row per bench row: model, mode, row, precision, img/s, ratios, peak share."""
    lines = [
        "| model | mode | row | precision | img/s | x seed | x user | peak % | warm-up s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for row in result["rows"]:
            ratios = [f"{row[key]:.2f}x" if row[key] else "-" for key in ("vs_seed", "vs_user")]
            lines.append(
                f"| {result['model']} | {result['mode']} | {row['row']} | {row['precision']} | "
                f"{row['images_per_s']:.1f} | {ratios[0]} | {ratios[1]} | "
                f"{100 * row['peak_share']:.1f} | {row['warmup_s']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="+", default=["resnet20", "resnet56", "resnet18", "resnet50"]
    )
    parser.add_argument("--modes", nargs="+", default=["train", "infer"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, help="every bench's (default: the standard set's)")
    parser.add_argument("--input-size", type=int, help="every bench's (default: the standard's)")
    parser.add_argument("--steps", type=int, help="per round (default: 2 above 64 pixels, else 4)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True,
        help="the compiled rows (default: on)",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/bench_standard.json")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "models": ["resnet20"], "modes": ["train"], "batch": 2, "input_size": 8, "steps": 1,
            "rounds": 1, "compile": False, "out": str(folder / "bench_standard.json"),
        },
    )  # fmt: skip
    results = []
    for (model, mode), (batch, size) in STANDARD.items():
        if model in args.models and mode in args.modes:
            size = args.input_size or size
            steps = args.steps or (2 if size > 64 else 4)
            cfg = BenchConfig(
                model, mode, args.batch or batch, size, steps=steps, rounds=args.rounds,
                compile=args.compile,
            )  # fmt: skip
            results.append(bench(cfg))
            print(markdown(results[-1:]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {results[0]['machine']}, {results[0]['threads']} threads")
    print(markdown(results))


if __name__ == "__main__":
    main()
