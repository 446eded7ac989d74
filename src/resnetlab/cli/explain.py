"""`resnetlab explain`."""

from __future__ import annotations

import argparse

from resnetlab.config.train import DEVICE_HELP, EXPLAIN_METHODS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "explain", help="where the network looks: a class activation map over each image"
    )
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument(
        "--layer", help="the layer to explain, e.g. layer2 or layer3.1 (default: the last stage)"
    )
    p.add_argument(
        "--class",
        dest="target",
        metavar="K",
        help="the class to explain, by name or index (a name wins: a folder's class 9 is the "
        "class named 9; default: each image's top class)",
    )
    p.add_argument("--method", choices=EXPLAIN_METHODS, default="gradcam")
    p.add_argument(
        "--out", default="explanations", help="folder for the pictures (default: explanations)"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.explain.pictures import explain_images

    entries = explain_images(
        args.checkpoint,
        args.images,
        layer=args.layer,
        target=args.target,
        method=args.method,
        out=args.out,
        device=args.device,
    )
    for entry in entries:
        print(
            f"{entry['input']}: {entry['class']} {100 * entry['probability']:.1f}% "
            f"({entry['method']}, {entry['layer']}) -> {entry['file']}"
        )
