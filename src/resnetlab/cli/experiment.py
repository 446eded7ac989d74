"""`resnetlab experiment {degradation,gradients,case-study,video}`: the evidence behind
ResNets."""

from __future__ import annotations

import argparse
from dataclasses import fields
from functools import partial
from typing import Any

from resnetlab.cli.common import DEVICE_HELP, NestedParser, add_overwrite_flag, add_runtime_flags
from resnetlab.engine.config import SCHEDULES
from resnetlab.experiments.config import (
    FAST,
    FULL,
    CaseStudyConfig,
    DegradationConfig,
    GradientConfig,
    Preset,
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


def _depths(source: Preset | GradientConfig) -> str:
    return " ".join(map(str, source.depths))


def _add_networks(p: argparse.ArgumentParser, depths: tuple[int, ...] | None, shown: str) -> None:
    """``--networks`` and ``--depths`` (default ``depths``, described as ``shown``)."""
    p.add_argument(
        "--networks", nargs="+", default=(), metavar="NAME",
        help="CIFAR networks to compare, e.g. plain20 resnet20 (default: from --depths)",
    )  # fmt: skip
    p.add_argument(
        "--depths", nargs="+", type=int, default=depths, metavar="N",
        help=f"train plain<N> and resnet<N> for each N (default: {shown})",
    )  # fmt: skip


def _register_degradation(experiments: argparse._SubParsersAction) -> None:
    d = DegradationConfig()
    p = experiments.add_parser(
        "degradation",
        help="plain vs residual networks of growing depth (He et al. 2015, Fig. 6)",
        description="Train plain and residual networks of growing depth with the paper's recipe "
        "on one data set; write degradation.png/.md/.json and say whether the degradation effect "
        "showed.",
    )
    p.add_argument("--data", default=d.data, help="image folder (default: %(default)s)")
    p.add_argument(
        "--fast", action="store_true",
        help=f"all training images and {FAST.val_subset} validation images at "
        f"{FAST.image_size}x{FAST.image_size}, depths {_depths(FAST)}, {FAST.epochs} epochs of "
        f"{FAST.schedule}: under 20 minutes on two CPU cores with native bf16",
    )  # fmt: skip
    _add_networks(p, None, f"{_depths(FULL)}; {_depths(FAST)} with --fast")
    p.add_argument("--subset", type=int, help="training images (stratified, seeded)")
    p.add_argument("--val-subset", type=int, help="validation images (stratified, seeded)")
    p.add_argument("--image-size", type=int, help="resize images to N x N")
    p.add_argument("--batch-size", type=int, help=f"(default: {FULL.batch_size})")
    p.add_argument("--epochs", type=int, help="epochs (default: as --iterations needs)")
    p.add_argument(
        "--iterations", type=int, help=f"stop after N steps (default: {FULL.iterations})"
    )
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction,
        help="4-pixel padded crops and flips (default: on, off with --fast)",
    )  # fmt: skip
    p.add_argument(
        "--warmup-epochs", type=float, help=f"linear lr warmup (default: {FULL.warmup_epochs:g})"
    )
    p.add_argument(
        "--schedule", choices=SCHEDULES,
        help=f"lr schedule (default: {FULL.schedule}, the paper's; {FAST.schedule} with --fast)",
    )  # fmt: skip
    p.add_argument(
        "--zero-init-residual", action=argparse.BooleanOptionalAction,
        help="start each residual branch at zero (default: off, on with --fast)",
    )  # fmt: skip
    _add_common(p, d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_flags(p)


def _register_gradients(experiments: argparse._SubParsersAction) -> None:
    d = GradientConfig()
    p = experiments.add_parser(
        "gradients",
        help="gradient norm of every layer, at init and after training",
        description="Measure ||dL/dW|| of every conv/linear layer of plain and residual "
        "networks on one fixed batch; write gradients.png/.md/.json.",
    )
    p.add_argument("--data", default=d.data, help="image data (default: %(default)s)")
    _add_networks(p, d.depths, _depths(d))
    p.add_argument(
        "--steps", type=int, default=d.steps, help="SGD steps before the second look (%(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="constant learning rate (%(default)s)")
    p.add_argument("--device", default=d.device, help=DEVICE_HELP)
    _add_common(p, d.seed)


def _register_case_study(experiments: argparse._SubParsersAction) -> None:
    d = CaseStudyConfig()
    p = experiments.add_parser(
        "case-study",
        help="the article's worked case (sec. 4.3 and 5.4), with baselines",
        description="Train the article's two-block tabular ResNet with its recipe; compare "
        "with the network without shortcuts, the NumPy scratch model and logistic regression.",
    )
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds 0..N-1 (%(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--out", help="output folder (default: runs/<date-time>-case-study)")
    add_overwrite_flag(p)


def _register_video(experiments: argparse._SubParsersAction) -> None:
    d = VideoConfig()
    p = experiments.add_parser(
        "video",
        help="a 3-D ResNet against two controls that cannot see time (moving-digits)",
        description="Train a small 3-D ResNet on moving-digits, the same network on clips with "
        "shuffled frames, and a 2-D ResNet frame by frame (logits averaged), on one test split; "
        "write video.png/.md/.json.",
    )
    p.add_argument("--model", default=d.model, help="3-D network (default: %(default)s)")
    p.add_argument(
        "--frame-model", default=d.frame_model, help="per-frame network (default: %(default)s)"
    )
    p.add_argument(
        "--image-size", type=int, default=d.image_size, help="frame side (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="(default: %(default)s)")
    p.add_argument("--limit-steps", type=int, help="stop each run after N steps")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    _add_common(p, d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_flags(p)


def _add_common(p: argparse.ArgumentParser, seed: int) -> None:
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", help="output folder (default: runs/<date-time>-<experiment>)")
    add_overwrite_flag(p)


def _config(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` (a config dataclass) from the parsed flags of the same names; lists as tuples."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run(args: argparse.Namespace) -> None:
    """Run the experiment named in ``args``; each one prints its own report."""
    if args.experiment == "degradation":
        from resnetlab.experiments.degradation import run_degradation

        run_degradation(_config(DegradationConfig, args), overwrite=args.overwrite)
    elif args.experiment == "gradients":
        from resnetlab.experiments.gradients import run_gradients

        run_gradients(_config(GradientConfig, args), overwrite=args.overwrite)
    elif args.experiment == "case-study":
        from resnetlab.experiments.case_study import run_case_study

        run_case_study(_config(CaseStudyConfig, args), overwrite=args.overwrite)
    else:
        from resnetlab.experiments.video import run_video

        run_video(_config(VideoConfig, args), overwrite=args.overwrite)
