"""`resnetlab quantize`."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli.export import add_export_flags, export_config, print_export


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "quantize",
        help="an int8 ONNX file of a checkpoint, with its accuracy drop",
        description="int8 (onnxruntime static quantization, QDQ, per-channel weights), "
        "calibrated on the checkpoint's training split, checked against the checkpoint, then "
        "evaluated with it on the same split.",
    )
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("--out", required=True, help="the int8 .onnx file")
    add_export_flags(p)
    p.set_defaults(func=run, format="onnx", int8=True)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.inference.export import quantize

    result = quantize(export_config(args))
    if args.json:
        print(json.dumps(result))
        return
    print_export(result)
    print(
        f"on {result['samples']} {result['split']} samples: int8 accuracy "
        f"{result['int8_accuracy']:.2f}%, float {result['float_accuracy']:.2f}%, "
        f"drop {result['drop']:.2f} points"
    )
