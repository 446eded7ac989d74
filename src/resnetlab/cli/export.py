"""`resnetlab export`."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "export",
        help="a checkpoint as an ONNX or pt2 file, checked against it",
        description="Export a checkpoint (dynamic batch size; classes, task, mean/std and input "
        "shape in the file's metadata), then check the file in its runtime against the "
        "checkpoint in PyTorch; a failed check is an error.",
    )
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 through onnxruntime, calibrated on the training split (as `quantize`)",
    )
    p.add_argument("--out", help="the file (default: the checkpoint's path, .onnx or .pt2)")
    add_export_flags(p)
    p.set_defaults(func=run)


def add_export_flags(p: argparse.ArgumentParser) -> None:
    """The flags `export` and `quantize` share."""
    p.add_argument(
        "--data", help="data for calibration and the parity check (default: the checkpoint's)"
    )
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=8,
        help="int8: training batches the ranges are calibrated on (default 8)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--parity-samples",
        type=int,
        default=32,
        help="held-out inputs the file is checked on (default 32)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def export_config(args: argparse.Namespace) -> Any:
    """The ``ExportConfig`` of parsed ``args``."""
    from resnetlab.inference.export import ExportConfig

    return ExportConfig(**{f.name: getattr(args, f.name) for f in fields(ExportConfig)})


def print_export(result: dict[str, Any]) -> None:
    """The written file, its parity line and where the parity record is."""
    kind = f"{result['format']}{' int8' if result['int8'] else ''}"
    print(f"wrote {result['file']} ({kind}, {result['bytes'] / 1e6:.1f} MB)")
    print(result["parity_line"])
    print(f"parity record: {result['file']}.parity.json")


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.inference.export import export

    result = export(export_config(args))
    if args.json:
        print(json.dumps(result))
    else:
        print_export(result)
