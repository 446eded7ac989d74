"""`resnetlab detect train|eval|predict`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial

from resnetlab.cli.common import NestedParser
from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.config.train import DEVICE_HELP
from resnetlab.detection.config import DetectConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "detect",
        help="object detection: torchvision detectors on resnetlab backbones",
        description="Faster R-CNN, RetinaNet or FCOS on a resnetlab backbone with a feature "
        "pyramid, on the built-in `shapes` set or a COCO-format folder.",
    )
    actions = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=partial(NestedParser, parent=p)
    )
    _register_train(actions)
    _register_eval(actions)
    _register_predict(actions)


def _register_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a detector")
    add_settings(p, DetectConfig)
    p.set_defaults(func=_train)


def _register_eval(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("eval", help="mAP@0.5 and mAP@[.5:.95] of a detector checkpoint")
    p.add_argument("--checkpoint", required=True, help="best.safetensors of `detect train`")
    p.add_argument("--data", help="shapes or a COCO folder (default: the run's own data)")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)


def _register_predict(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("predict", help="boxes on images, printed and drawn")
    p.add_argument("--checkpoint", required=True, help="best.safetensors of `detect train`")
    p.add_argument("inputs", nargs="+", metavar="IMAGE")
    p.add_argument("--out", help="folder for the images with their boxes drawn")
    p.add_argument("--threshold", type=float, default=0.5, help="lowest score shown")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> None:
    from resnetlab.detection.detect import detect_train

    detect_train(config_from_args(DetectConfig, args))


def _eval(args: argparse.Namespace) -> None:
    from resnetlab.detection.detect import detect_eval

    result = detect_eval(args.checkpoint, args.data, args.split, args.batch_size, args.device)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['data']} {result['split']} ({result['images']} images): "
        f"mAP@0.5: {result['map_50']:.3f}, mAP@[.5:.95]: {result['map']:.3f}"
    )


def _predict(args: argparse.Namespace) -> None:
    from resnetlab.detection.detect import detect_predict

    results = detect_predict(args.checkpoint, args.inputs, args.out, args.threshold, args.device)
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
        return
    for result in results:
        found = ", ".join(
            f"{b['class']} {b['score']:.2f} [{', '.join(f'{v:.0f}' for v in b['box'])}]"
            for b in result.boxes
        )
        drawn = f" -> {result.drawing}" if result.drawing else ""
        print(f"{result.input}: {found or 'nothing found'}{drawn}")
