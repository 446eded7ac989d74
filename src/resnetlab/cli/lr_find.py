"""`resnetlab lr-find`: `finetune`'s flags but those of long runs, and ``LrRange``'s."""

from __future__ import annotations

import argparse

from resnetlab.cli.finetune import FIRST, STRATEGY
from resnetlab.cli.flags import add_settings, config_from_args, in_group
from resnetlab.config.finetune import FinetuneConfig
from resnetlab.config.train import LONG_RUNS, LrRange, TrainConfig
from resnetlab.errors import ResnetlabError


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
    add_settings(p, TrainConfig, ["model"])  # its help: without --weights, `train`'s default
    add_settings(p, FinetuneConfig, FIRST[1:])
    add_settings(
        p, FinetuneConfig, leave_out=(*FIRST, "time_budget", *in_group(TrainConfig, LONG_RUNS))
    )
    add_settings(p, LrRange)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.training.lr_find import lr_find

    if args.weights is None:
        given = [name for name in STRATEGY if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ResnetlabError(f"{flags}: fine-tuning flags, which need --weights")
    cfg = config_from_args(FinetuneConfig if args.weights else TrainConfig, args)
    lr_find(cfg, config_from_args(LrRange, args))
