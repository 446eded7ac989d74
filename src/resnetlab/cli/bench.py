"""`resnetlab bench`."""

from __future__ import annotations

import argparse
from typing import Any

from resnetlab.bench.config import BenchConfig
from resnetlab.cli.flags import add_settings, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "bench",
        help="training or inference speed next to the loops users write, and the hardware's",
        description="Measure, in one process and in interleaved rounds, the device's fp32, bf16 "
        "and fp16 matmul TFLOP/s and the images per second of: the tutorial's fp32 loop "
        "(seed-style), the loop a user would write with bf16 autocast (where the device has "
        "it natively) and channels-last (benchmarks/user_loop.py), resnetlab's own step, and "
        "resnetlab compiled, every row on --device.",
    )
    add_settings(p, BenchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.bench.measure import bench

    print(format_table(bench(config_from_args(BenchConfig, args))))


def format_table(result: dict[str, Any]) -> str:
    """The bench's results as the table it prints."""
    shape = "x".join(map(str, result["input_shape"]))
    peaks = result["matmul_tflops"]
    best = max(peaks, key=peaks.get)
    lines = [
        f"{result['model']} {result['mode']}, batch {result['batch']}, {shape}, "
        f"{result['macs_per_image'] / 1e6:,.1f}M multiply-adds per image | "
        f"{result['machine']}, {result['threads']} threads, torch {result['torch']}",
        "matmul ceiling: " + ", ".join(f"{name} {tflops:.3f}" for name, tflops in peaks.items())
        + f" TFLOP/s (peak % is of {best}, the fastest here)",
        f"{'row':<20} {'precision':<9} {'img/s':>9} {'x seed':>7} {'x user':>7} "
        f"{'peak %':>7} {'warm-up s':>10}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['row']:<20} {row['precision']:<9} {row['images_per_s']:>9.1f} "
            f"{_ratio(row['vs_seed']):>7} {_ratio(row['vs_user']):>7} "
            f"{100 * row['peak_share']:>6.1f}% {row['warmup_s']:>10.1f}"
        )
    lines.append("rows:")
    lines.extend(f"  {row['row']}: {row['what']}" for row in result["rows"])
    if result["user_loop"]:
        lines.append(f"  seed-style and user loops: {result['user_loop']}")
    else:
        lines.append("  (no seed-style or user row: pass --user-loop benchmarks/user_loop.py)")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
