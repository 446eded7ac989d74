"""`resnetlab finetune`: a flag for each ``FinetuneConfig`` field (config/finetune.py)
but ``--time-budget``; the model, the weights and the strategy first."""

from __future__ import annotations

import argparse
from dataclasses import fields

from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.config.finetune import FinetuneConfig
from resnetlab.config.train import TrainConfig

# the settings that fine-tuning adds to training's (--strategy, --bn, ...)
STRATEGY = tuple(
    f.name for f in fields(FinetuneConfig) if f.name not in {t.name for t in fields(TrainConfig)}
)
FIRST = ("model", "weights", "mean", "std", *STRATEGY)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune pretrained weights on a dataset",
        description="Start from pretrained weights (any ResNet source), give them a head for "
        "the data's classes and train by strategy; writes a run folder. Defaults suit a "
        "small dataset: gradual over 20 epochs, AdamW, lr 0.002, batch 64.",
    )
    add_settings(p, FinetuneConfig, FIRST)
    add_settings(p, FinetuneConfig, leave_out=(*FIRST, "time_budget"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.training.finetune import finetune

    finetune(config_from_args(FinetuneConfig, args))
