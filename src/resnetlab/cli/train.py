"""`resnetlab train`: a flag for each ``TrainConfig`` field (config/train.py)."""

from __future__ import annotations

import argparse

from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.config.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a model on a dataset",
        description="Train a residual network; writes a run folder.",
    )
    add_settings(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.config.train import AUTO_MODEL
    from resnetlab.training.train import train

    cfg = config_from_args(TrainConfig, args)
    if args.model is None and args.weights:
        cfg.model = AUTO_MODEL
    train(cfg)
