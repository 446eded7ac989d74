"""`resnetlab finetune`, and the fine-tuning flags that `lr-find` shares.

Flags default to None here and ``FinetuneConfig`` fills in its defaults, so that building the
parser imports no torch (the defaults named in the help text are that class's).
"""

from __future__ import annotations

import argparse

from resnetlab.cli.train import (
    add_long_run_flags,
    add_training_flags,
    add_weights_flags,
    config_from_args,
)


def add_finetune_flags(p: argparse.ArgumentParser) -> None:
    """``--strategy``, ``--bn``, ``--head-epochs``, ``--backbone-lr-mult``, ``--stage-decay``."""
    p.add_argument(
        "--strategy",
        help="gradual (default): the head only for --head-epochs, then everything at half "
        "the lr (fastai's fine_tune); lp-ft: linear probe, then everything at the backbone's "
        "lr (Kumar et al. 2022); full: everything, the backbone at a lower lr; "
        "linear-probe: the head only",
    )
    p.add_argument(
        "--bn",
        help="BatchNorm while the backbone trains: train (default; batch statistics), "
        "freeze-stats (running statistics kept) or frozen (FrozenBatchNorm2d)",
    )
    p.add_argument(
        "--head-epochs",
        type=int,
        help="gradual and lp-ft: epochs that train only the head "
        "(default: 1 for gradual, half of --epochs for lp-ft)",
    )
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        help="the backbone's lr is this times the head's (default: 0.5)",
    )
    p.add_argument(
        "--stage-decay",
        type=float,
        help="each earlier backbone stage trains at this times the next one's lr "
        "(default: 1, no decay)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune pretrained weights on a dataset",
        description="Start from pretrained weights (any ResNet source), give them a head for "
        "the data's classes and train by strategy; writes a run folder. Defaults suit a "
        "small dataset: gradual over 20 epochs, AdamW, lr 0.002, batch 64.",
    )
    p.add_argument(
        "--model",
        help="model name (default: the weights' header's, else inferred from their keys)",
    )
    add_weights_flags(p)
    add_finetune_flags(p)
    add_training_flags(p, None)
    add_long_run_flags(p, None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.commands.finetune import finetune
    from resnetlab.engine.finetune import FinetuneConfig

    finetune(config_from_args(FinetuneConfig, args), overwrite=args.overwrite)
