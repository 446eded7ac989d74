"""`resnetlab train`, and the training flags that `finetune` and `lr-find` share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

from resnetlab.cli.common import (
    add_compile_flag,
    add_overwrite_flag,
    add_runtime_flags,
    parse_option,
)
from resnetlab.engine.config import (
    AUTO_AUGMENTS,
    BEST_BY,
    CLASS_WEIGHTS,
    LOSSES,
    NUMERIC_TRANSFORMS,
    ON_NAN,
    OPTIMIZERS,
    PADDING_MODES,
    SCHEDULES,
    TASKS,
    TTAS,
    TrainConfig,
)
from resnetlab.engine.recipes import RECIPES

Config = TypeVar("Config", bound=TrainConfig)


def add_training_flags(p: argparse.ArgumentParser, d: TrainConfig | None) -> None:
    """A flag per ``TrainConfig`` field but ``--model`` (each command says what its default
    means), defaulting to ``d``'s values (``d`` None: flags not given stay None, and
    ``config_from_args`` leaves those fields at their class default)."""
    default = _defaults(d)
    p.add_argument(
        "--data",
        default=default("data"),
        help="built-in name (digits, mnist5k, tabular-synthetic, moving-digits, "
        "moving-digits-shuffled), a table (.csv, .tsv, .parquet), an image folder or a clip "
        "folder",
    )
    p.add_argument("--target", help="tables: the column to predict")
    p.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        type=parse_option,
        metavar="KEY=VALUE",
        help="model option, e.g. shortcut=B (repeatable)",
    )
    p.add_argument("--epochs", type=int, default=default("epochs"))
    p.add_argument(
        "--batch-size",
        type=int,
        default=default("batch_size"),
        help="the global batch: under torchrun the processes share it, so a run learns the "
        "same whatever the number of processes; 0: from the data size (--recipe tabular)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=default("optimizer"))
    p.add_argument("--lr", type=float, default=default("lr"), help="peak learning rate")
    p.add_argument("--momentum", type=float, default=default("momentum"))
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=default("nesterov"))
    p.add_argument("--weight-decay", type=float, default=default("weight_decay"))
    p.add_argument(
        "--decay-norm-and-bias",
        action=argparse.BooleanOptionalAction,
        default=default("decay_norm_and_bias"),
        help="also apply weight decay to norm weights and biases",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=default("schedule"),
        help="step = lr/10 at 50%% and 75%% of training (the paper's)",
    )
    p.add_argument("--warmup-epochs", type=float, default=default("warmup_epochs"))
    p.add_argument("--label-smoothing", type=float, default=default("label_smoothing"))
    p.add_argument(
        "--ema",
        type=float,
        default=default("ema"),
        metavar="DECAY",
        help="evaluate and checkpoint an exponential moving average of the weights (this "
        "decay per step), its BatchNorm statistics recomputed on training images",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=default("loss"),
        help="classification: ce = cross-entropy (default), bce = one-logit binary "
        "cross-entropy (2 classes); regression: mse (default) or huber",
    )
    p.add_argument(
        "--best-by",
        choices=BEST_BY,
        default=default("best_by"),
        help="the best checkpoint: highest validation accuracy or lowest validation loss "
        "(regression: always the loss)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=default("patience"),
        metavar="EPOCHS",
        help="early stopping: stop after this many epochs without a better best epoch",
    )
    p.add_argument("--seed", type=int, default=default("seed"))
    p.add_argument("--val-fraction", type=float, default=default("val_fraction"))
    p.add_argument("--test-fraction", type=float, default=default("test_fraction"))
    p.add_argument(
        "--image-size",
        "--input-size",
        dest="image_size",
        type=int,
        help="resize images (clips: each frame) to this square size (default: the weights' "
        "own, else the data's)",
    )
    p.add_argument("--out", help="run folder (default: runs/<date>-<model>-<data>)")
    add_overwrite_flag(p)
    p.add_argument("--limit-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--quiet", action="store_true", default=default("quiet"), help="no progress bar")
    add_image_flags(p, default)
    add_table_flags(p, default)
    add_runtime_flags(p)
    add_compile_flag(p, default("compile"))


def add_image_flags(p: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """Recipes, augmentation, test-time augmentation and image-folder reading."""
    g = p.add_argument_group("images: recipes, augmentation and folders")
    g.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=default("recipe"),
        help="paper = He et al. 2015 sec. 4.2; fast = best accuracy in a CPU budget; "
        "speedrun = the speed-run network's recipe (most accuracy per second); "
        "tabular = AdamW with early stopping, the default for table files "
        "(flags given still override)",
    )
    g.add_argument(
        "--crop-padding",
        type=int,
        default=default("crop_padding"),
        help="random crop after padding by N pixels (batched, cached data)",
    )
    g.add_argument("--padding-mode", choices=PADDING_MODES, default=default("padding_mode"))
    g.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=default("flip"),
        help="random horizontal flips (streaming: RandomResizedCrop + flip)",
    )
    g.add_argument(
        "--flip-alternate",
        action=argparse.BooleanOptionalAction,
        default=default("flip_alternate"),
        help="flip each image in alternate epochs instead of at random",
    )
    g.add_argument(
        "--cutout",
        type=int,
        default=default("cutout"),
        metavar="N",
        help="cutout square of N pixels",
    )
    g.add_argument(
        "--auto-augment",
        choices=AUTO_AUGMENTS,
        default=default("auto_augment"),
        help="streaming pipeline: TrivialAugmentWide or RandAugment",
    )
    g.add_argument(
        "--random-erasing",
        type=float,
        default=default("random_erasing"),
        metavar="P",
        help="streaming pipeline: random erasing probability",
    )
    g.add_argument("--mixup", type=float, default=default("mixup"), metavar="ALPHA")
    g.add_argument("--cutmix", type=float, default=default("cutmix"), metavar="ALPHA")
    g.add_argument(
        "--tta",
        choices=TTAS,
        default=default("tta"),
        help="test-time augmentation for the final evaluation (per-epoch validation is plain)",
    )
    g.add_argument(
        "--cache-dir",
        default=default("cache_dir"),
        help="decoded-image cache (default: $RESNETLAB_CACHE_DIR or ~/.cache/resnetlab)",
    )
    g.add_argument(
        "--cache-mem",
        type=float,
        default=default("cache_mem"),
        metavar="GIB",
        help="largest decoded dataset kept in memory (default: 1/4 of RAM, <= 4; 0: stream)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=default("strict"),
        help="stop before training if any image file is bad, or any table row lacks a target",
    )
    g.add_argument("--val-dir", default=default("val_dir"), help="a separate validation folder")
    g.add_argument("--test-dir", default=default("test_dir"), help="a separate test folder")


def add_table_flags(p: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """Reading and preprocessing tables, the task, class weights and the baselines."""
    g = p.add_argument_group("tables: reading, preprocessing, task, comparison")
    g.add_argument("--delimiter", default=default("delimiter"), help="(default: sniffed)")
    g.add_argument(
        "--categorical",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=default("categorical"),
        metavar="COL,...",
        help="also one-hot encode these columns (text columns always are)",
    )
    g.add_argument(
        "--max-categories",
        type=int,
        default=default("max_categories"),
        help="a categorical column with more distinct values is dropped, with a warning",
    )
    g.add_argument(
        "--numeric-transform",
        choices=NUMERIC_TRANSFORMS,
        default=default("numeric_transform"),
        help="numeric columns: standardise, or map through the training quantiles to a normal",
    )
    g.add_argument(
        "--task",
        choices=TASKS,
        default=default("task"),
        help="(default: regression for a fractional target or one of more than 20 whole numbers)",
    )
    g.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        default=default("class_weight"),
        help="weight each class's loss by n / (classes x its rows)",
    )
    g.add_argument(
        "--baselines",
        action="store_true",
        default=default("baselines"),
        help="also fit scikit-learn's linear model and gradient boosting on the same split; "
        "writes baselines.json",
    )


def _defaults(d: TrainConfig | None) -> Callable[[str], Any]:
    """A flag's default: the field of ``d``, or None for every flag when ``d`` is None."""
    return lambda name: None if d is None else getattr(d, name)


def add_long_run_flags(p: argparse.ArgumentParser, d: TrainConfig | None) -> None:
    """Resuming, saving the training state, non-finite losses, clipping and TensorBoard."""
    default = _defaults(d)
    g = p.add_argument_group("long runs: resume, stops, non-finite losses")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in this folder from its training state (state.pt), with its "
        "settings; on the CPU it ends bit-identical to a run that never stopped",
    )
    g.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        default=default("save_every"),
        help="also save the training state every N steps (it is always saved each epoch)",
    )
    g.add_argument(
        "--save-every-minutes",
        type=float,
        metavar="M",
        default=default("save_every_minutes"),
        help="also save the training state every M minutes",
    )
    g.add_argument(
        "--on-nan",
        choices=ON_NAN,
        default=default("on_nan"),
        help="a non-finite loss stops the run, keeping the last good state (default), or its "
        "step is skipped",
    )
    g.add_argument(
        "--max-nan-steps",
        type=int,
        metavar="N",
        default=default("max_nan_steps"),
        help="--on-nan skip: stop after N skipped steps (default: 10)",
    )
    g.add_argument(
        "--clip-grad",
        type=float,
        metavar="NORM",
        default=default("clip_grad"),
        help="clip gradients to this global norm; metrics.jsonl gets their mean norm",
    )
    g.add_argument(
        "--resume-any-world",
        action="store_true",
        default=default("resume_any_world"),
        help="resume with another number of torchrun processes (the run is no longer exact)",
    )
    g.add_argument(
        "--sync-bn",
        action="store_true",
        default=default("sync_bn"),
        help="torchrun on GPUs: SyncBatchNorm (on CPUs BatchNorm statistics are averaged "
        "over the processes before each evaluation and checkpoint)",
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        default=default("tensorboard"),
        help="write each epoch's scalars to RUN_DIR/tensorboard (needs the tensorboard package)",
    )


def add_weights_flags(p: argparse.ArgumentParser) -> None:
    """``--weights`` and the normalisation of weights that carry none (``--mean``/``--std``)."""
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="start from these weights: a resnetlab checkpoint, a torchvision/timm state dict "
        "or a CIFAR training script's checkpoint (.pth, .pt, .th, .safetensors)",
    )
    for flag, example in (("--mean", "0.485 0.456 0.406"), ("--std", "0.229 0.224 0.225")):
        p.add_argument(
            flag,
            type=float,
            nargs="+",
            metavar="X",
            help=f"per-channel normalisation the weights were trained with, e.g. {example} for "
            "ImageNet (default: a resnetlab checkpoint's own, else the data's statistics)",
        )


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """``cls`` built from the flags of its fields; flags left None take the class default."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values["model_options"] = dict(args.model_options or [])
    return cls(**{name: value for name, value in values.items() if value is not None})


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a model on a dataset",
        description="Train a residual network; writes a run folder.",
    )
    p.add_argument(
        "--model",
        help="model name (default: resnet20; with --weights: the weights' own architecture)",
    )
    add_training_flags(p, TrainConfig())
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="fit the whole run to this wall-clock time: the first steps' speed sets --epochs "
        "(and --limit-steps, to cut the last epoch), written to config.yaml; wins over --epochs",
    )
    add_long_run_flags(p, TrainConfig())
    add_weights_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.commands.train import train
    from resnetlab.engine.config import AUTO_MODEL

    cfg = config_from_args(TrainConfig, args)
    if args.model is None and args.weights:
        cfg.model = AUTO_MODEL
    train(cfg, overwrite=args.overwrite)
