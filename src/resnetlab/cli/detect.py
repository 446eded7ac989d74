"""`resnetlab detect train|eval|predict`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from functools import partial

from resnetlab.cli.common import DEVICE_HELP, NestedParser, add_overwrite_flag
from resnetlab.detection.config import DETECTORS, NORMS, OPTIMIZERS, DetectConfig


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
    d = DetectConfig()
    p = actions.add_parser("train", help="train a detector")
    p.add_argument(
        "--data",
        default=d.data,
        help="shapes (built-in, synthetic) or a folder with images and a COCO annotations "
        "JSON (annotations.json, or its only .json file)",
    )
    p.add_argument("--model", default=d.model, help="backbone: any 2-D resnetlab network")
    p.add_argument("--detector", choices=DETECTORS, default=d.detector)
    p.add_argument(
        "--weights",
        help="start the backbone from a classifier: a resnetlab checkpoint or a "
        "torchvision/timm state dict (its head is dropped)",
    )
    p.add_argument(
        "--norm",
        choices=NORMS,
        default=d.norm,
        help="backbone normalisation: auto = frozen BatchNorm from --weights, GroupNorm (gn) "
        "from scratch (default: auto)",
    )
    p.add_argument(
        "--trainable-stages",
        type=int,
        help="feature levels that train, counted from the deepest (stem included); "
        "default: all from scratch, 3 from --weights",
    )
    p.add_argument("--image-size", type=int, default=d.image_size, help="longest side, px")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="COCO data")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="COCO data")
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between states")
    p.add_argument("--limit", type=int, help="keep the first N images of each split (trials)")
    p.add_argument("--device", default=d.device, help=DEVICE_HELP)
    p.add_argument("--out", help="run folder (default: runs/<date-time>-<detector>-<model>-<data>)")
    add_overwrite_flag(p)
    # dest differs from `train`'s --resume, whose run folders hold another kind of state
    p.add_argument("--resume", dest="resume_run", metavar="RUN_DIR", help="continue this run")
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
    from resnetlab.commands.detect import detect_train

    values = {f.name: getattr(args, f.name) for f in fields(DetectConfig) if hasattr(args, f.name)}
    detect_train(DetectConfig(**values, resume=args.resume_run), overwrite=args.overwrite)


def _eval(args: argparse.Namespace) -> None:
    from resnetlab.commands.detect import detect_eval

    result = detect_eval(args.checkpoint, args.data, args.split, args.batch_size, args.device)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['data']} {result['split']} ({result['images']} images): "
        f"mAP@0.5: {result['map_50']:.3f}, mAP@[.5:.95]: {result['map']:.3f}"
    )


def _predict(args: argparse.Namespace) -> None:
    from resnetlab.commands.detect import detect_predict

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
