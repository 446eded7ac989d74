"""`resnetlab eval`."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.config.train import TTAS, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint",
        description="Top-1, top-5, per-class accuracy and confusion matrix (regression: RMSE, "
        "MAE and R²).",
    )
    p.add_argument(
        "--checkpoint",
        help="a .safetensors checkpoint from `train` or `finetune`, or a file from `export`",
    )
    add_settings(p, TrainConfig, ["weights", "mean", "std"])
    p.add_argument(
        "--input-size",
        "--image-size",
        dest="image_size",
        type=int,
        help="with --weights: resize images to this square size (default: the data's)",
    )
    p.add_argument(
        "--data",
        help="data source (default: the one the checkpoint was trained on; "
        "required with --weights)",
    )
    p.add_argument(
        "--split",
        help="test, val, train or all (default: test on the training data, as the run split "
        "it; all on any other --data)",
    )
    p.add_argument(
        "--model",
        help="fail unless the checkpoint holds this model; with --weights: their architecture "
        "(default: inferred from them)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", choices=TTAS, help="test-time augmentation: flip = average with mirror")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_settings(p, TrainConfig, ["precision", "device", "workers", "compile"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.inference.evaluate import EvalConfig, evaluate

    report = evaluate(config_from_args(EvalConfig, args))
    if args.json:
        print(json.dumps(report))
        return
    if "loaded" in report:
        print(report["loaded"])
    if "rmse" in report:
        from resnetlab.training.metrics import headline

        print(
            f"{report['model']} on {report['samples']} {report['split']} rows: {headline(report)}"
        )
        return
    print(
        f"{report['model']} on {report['samples']} {report['split']} samples: "
        f"accuracy {report['accuracy']:.2f}%"
        + (f", top-5 {report['top5']:.2f}%" if "top5" in report else "")
    )
    width = max(len(c) for c in report["classes"])
    for name, acc in report["per_class"].items():
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:6.2f}%'}")
    print("confusion matrix (rows: true, columns: predicted):")
    for row in report["confusion"]:
        print("  " + " ".join(f"{v:5d}" for v in row))
