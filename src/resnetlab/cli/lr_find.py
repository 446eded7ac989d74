"""`resnetlab lr-find`."""

from __future__ import annotations

import argparse

from resnetlab.cli.finetune import add_finetune_flags
from resnetlab.cli.train import add_training_flags, add_weights_flags, config_from_args
from resnetlab.errors import ResnetlabError

_NEED_WEIGHTS = ("strategy", "bn", "head_epochs", "backbone_lr_mult", "stage_decay")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: plot loss against lr, suggest an lr",
        description="Train briefly while the lr grows exponentially; saves lr_find.png and "
        "prints the lr of steepest loss descent (and the loss minimum / 10). Probes `train` "
        "(--model) or, with --weights, the first phase of `finetune`; flags not given take "
        "that command's defaults. Nothing of the probe is kept.",
    )
    p.add_argument(
        "--model",
        help="model name (default: resnet20; with --weights: the weights' own architecture)",
    )
    add_weights_flags(p)
    add_finetune_flags(p)
    add_training_flags(p, None)
    p.add_argument("--start-lr", type=float, help="first lr of the sweep (default: 1e-7)")
    p.add_argument("--end-lr", type=float, help="last lr of the sweep (default: 10)")
    p.add_argument("--steps", type=int, help="optimiser steps in the sweep (default: 100)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.commands.lr_find import LrRange, lr_find
    from resnetlab.engine.config import TrainConfig
    from resnetlab.engine.finetune import FinetuneConfig

    if args.weights is None:
        given = [name for name in _NEED_WEIGHTS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ResnetlabError(f"{flags}: fine-tuning flags, which need --weights")
    cfg = config_from_args(FinetuneConfig if args.weights else TrainConfig, args)
    sweep = {"start_lr": args.start_lr, "end_lr": args.end_lr, "steps": args.steps}
    lr_range = LrRange(**{k: v for k, v in sweep.items() if v is not None})
    lr_find(cfg, lr_range, overwrite=args.overwrite)
