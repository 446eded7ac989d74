"""`resnetlab experiment {degradation,gradients,case-study,video}`: the evidence behind
ResNets."""

from __future__ import annotations

import argparse
from functools import partial

from resnetlab.cli.common import NestedParser
from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.experiments.config import (
    CaseStudyConfig,
    DegradationConfig,
    GradientConfig,
    VideoConfig,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "experiment",
        help="reproduce the evidence: degradation, gradients, case-study, video",
        description="Experiments that show why residual connections matter (see docs/guide.md).",
    )
    experiments = p.add_subparsers(
        dest="experiment", required=True, metavar="EXPERIMENT",
        parser_class=partial(NestedParser, parent=p),
    )  # fmt: skip
    _register_degradation(experiments)
    _register_gradients(experiments)
    _register_case_study(experiments)
    _register_video(experiments)
    p.set_defaults(func=run)


def _register_degradation(experiments: argparse._SubParsersAction) -> None:
    p = experiments.add_parser(
        "degradation",
        help="plain vs residual networks of growing depth (He et al. 2015, Fig. 6)",
        description="Train plain and residual networks of growing depth with the paper's recipe "
        "on one data set; write degradation.png/.md/.json and say whether the degradation effect "
        "showed.",
    )
    add_settings(p, DegradationConfig)


def _register_gradients(experiments: argparse._SubParsersAction) -> None:
    p = experiments.add_parser(
        "gradients",
        help="gradient norm of every layer, at init and after training",
        description="Measure ||dL/dW|| of every conv/linear layer of plain and residual "
        "networks on one fixed batch; write gradients.png/.md/.json.",
    )
    add_settings(p, GradientConfig)


def _register_case_study(experiments: argparse._SubParsersAction) -> None:
    p = experiments.add_parser(
        "case-study",
        help="the article's worked case (sec. 4.3 and 5.4), with baselines",
        description="Train the article's two-block tabular ResNet with its recipe; compare "
        "with the network without shortcuts, the NumPy scratch model and logistic regression.",
    )
    add_settings(p, CaseStudyConfig)


def _register_video(experiments: argparse._SubParsersAction) -> None:
    p = experiments.add_parser(
        "video",
        help="a 3-D ResNet against two controls that cannot see time (moving-digits)",
        description="Train a small 3-D ResNet on moving-digits, the same network on clips with "
        "shuffled frames, and a 2-D ResNet frame by frame (logits averaged), on one test split; "
        "write video.png/.md/.json.",
    )
    add_settings(p, VideoConfig)


def run(args: argparse.Namespace) -> None:
    """Run the experiment named in ``args``; each one prints its own report."""
    if args.experiment == "degradation":
        from resnetlab.experiments.degradation import run_degradation

        run_degradation(config_from_args(DegradationConfig, args))
    elif args.experiment == "gradients":
        from resnetlab.experiments.gradients import run_gradients

        run_gradients(config_from_args(GradientConfig, args))
    elif args.experiment == "case-study":
        from resnetlab.experiments.case_study import run_case_study

        run_case_study(config_from_args(CaseStudyConfig, args))
    else:
        from resnetlab.experiments.video import run_video

        run_video(config_from_args(VideoConfig, args))
