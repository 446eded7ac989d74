"""`resnetlab serve`."""

from __future__ import annotations

import argparse

from resnetlab.config.train import DEVICE_HELP, EXPLAIN_METHODS
from resnetlab.serve.batcher import MAX_BATCH


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "serve", help="a local web page and POST /predict: top-5 classes and a Grad-CAM overlay"
    )
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default: 10)"
    )
    p.add_argument("--method", choices=EXPLAIN_METHODS, default="gradcam")
    p.add_argument("--layer", help="the layer the overlay explains (default: the last stage)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--max-batch", type=int, default=MAX_BATCH,
        help="most requests explained in one call of the network: those that arrived while "
        "the last call ran (default: %(default)s; 1: one at a time)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.serve.server import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        method=args.method,
        layer=args.layer,
        device=args.device,
        max_batch=args.max_batch,
    )
