"""`resnetlab predict`."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli.flags import add_settings
from resnetlab.config.train import DEVICE_HELP, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "predict", help="top-k classes (or a regression's values) for image files or table rows"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .safetensors checkpoint, or a .onnx or .pt2 file from `export`",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, shards (.tar: each of their images) or table files (.csv, .tsv, "
        ".parquet)",
    )
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_settings(p, TrainConfig, ["compile"])
    p.set_defaults(func=run, compile=TrainConfig.compile)  # run() reads the flags as given


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.inference.predictor import predict_inputs

    results = predict_inputs(
        args.checkpoint, args.inputs, topk=args.topk, device=args.device, compile=args.compile
    )
    if args.json:
        print(json.dumps(results))
        return
    for item in results:
        if "value" in item:
            print(f"{item['input']}: {item['value']:.6g}")
            continue
        ranked = ", ".join(f"{p['class']} {100 * p['probability']:.1f}%" for p in item["top"])
        print(f"{item['input']}: {ranked}")
