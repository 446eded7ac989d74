"""The training configuration: one dataclass whose fields are `train`'s flags, each declared
once with its help, check and resume rule (``resnetlab.settings``); free of torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from resnetlab.config.recipes import RECIPES
from resnetlab.errors import ResnetlabError
from resnetlab.settings import at_least_one, check_settings, non_negative, positive, setting

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
LOSSES = ("ce", "bce", "mse", "huber")  # the first two classify, the others regress
CLASS_WEIGHTS = ("balanced",)
TASKS = ("classification", "regression")
NUMERIC_TRANSFORMS = ("standard", "quantile")
BEST_BY = ("accuracy", "loss")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PADDING_MODES = ("zeros", "reflect")
AUTO_AUGMENTS = ("trivial", "randaugment")
TTAS = ("flip",)
ON_NAN = ("stop", "skip")
COMPILE_CHOICES = ("auto", "on", "off")
EXPLAIN_METHODS = ("gradcam", "gradcam++", "scorecam")  # `explain`, `serve`
# --compile auto, from `resnetlab bench` on a 2-core AMD EPYC (AVX2): compiling gained 0% for
# resnet20 training and 9% for inference, before 52 s / 19 s of compiling (4 s / 6 s from
# Inductor's cache), so on a CPU it never clears a 10% net gain; on a GPU, where the gain is
# the documented one but was not measured here, it compiles image training runs this long
AUTO_MIN_STEPS = 2000
AUTO_RULE = (
    "auto compiles only image training on a GPU, for runs of at least "
    f"{AUTO_MIN_STEPS:,} steps: on CPUs `resnetlab bench` measured no gain of 10%% or more "
    "after compile time (resnet20: 0%% training, 9%% inference)"
)
AUTO_MODEL = "auto"  # --model auto: the architecture of the --weights file
DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: auto, a GPU where there is one)"
# help sections of `train`'s flags
IMAGES = "images: recipes, augmentation and folders"
TABLES = "tables: reading, preprocessing, task, comparison"
LONG_RUNS = "long runs: resume, stops, non-finite losses"
# --dist-timeout's default, in seconds: a lost machine stops the others within it (torch's own
# default is 30 minutes for gloo); it also bounds how long a machine's processes wait for its
# first one to build the decode cache
DIST_TIMEOUT = 300.0


def _column_list(text: str) -> list[str]:
    """``a, b,,c`` as ``["a", "b", "c"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _normalisation_help(example: str) -> str:
    return (
        f"per-channel normalisation the weights were trained with, e.g. {example} for "
        "ImageNet (default: a resnetlab checkpoint's own, else the data's statistics)"
    )


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the article's recipe
    (SGD, lr 0.1, momentum 0.9, weight decay 5e-4) with a one-cycle schedule. The fields are
    in the order of `train --help`."""

    command: ClassVar[str] = "train"  # the CLI command that runs this config

    model: str = setting(
        "resnet20",
        help="model name (default: resnet20; with --weights: the weights' own architecture)",
    )
    data: str = setting(
        "mnist5k",
        help="built-in name (digits, mnist5k, tabular-synthetic, moving-digits, "
        "moving-digits-shuffled), a table (.csv, .tsv, .parquet), an image folder, shards, "
        "image Parquet or a clip folder",
    )
    target: str | None = setting(
        None, help="tables: the column to predict; image Parquet: the label column (default: label)"
    )
    model_options: dict[str, Any] = setting(
        factory=dict,
        flag="--model-option",
        metavar="KEY=VALUE",
        help="model option, e.g. shortcut=B (repeatable)",
    )
    epochs: int = setting(
        10, check=at_least_one, error="{flag} must be at least 1 (got {value})", resumable=True
    )
    batch_size: int = setting(  # 0: from the training split's size (training.auto_batch_size)
        128,
        help="the global batch: under torchrun the processes share it, so a run learns the "
        "same whatever the number of processes; 0: from the data size (--recipe tabular)",
        check=lambda size: size == 0 or size >= 2,
        error="{flag} must be 0 (from the data) or at least 2, for BatchNorm's batch "
        "statistics (got {value})",
    )
    optimizer: str = setting("sgd", choices=OPTIMIZERS)
    lr: float = setting(
        0.1,
        help="peak learning rate",
        check=positive,
        error="{flag} must be positive (got {value})",
    )
    momentum: float = setting(
        0.9, check=lambda m: 0 <= m < 1, error="{flag} must be in [0, 1) (got {value})"
    )
    nesterov: bool = setting(False, negatable=True)
    weight_decay: float = setting(
        5e-4, check=non_negative, error="{flag} must be >= 0 (got {value})"
    )
    decay_norm_and_bias: bool = setting(
        False, negatable=True, help="also apply weight decay to norm weights and biases"
    )
    schedule: str = setting(
        "onecycle",
        choices=SCHEDULES,
        help="step = lr/10 at 50%% and 75%% of training (the paper's)",
    )
    warmup_epochs: float = setting(
        0.0,
        check=lambda epochs: 0 <= epochs < math.inf,
        error="{flag} must be >= 0 and finite (got {value})",
    )
    label_smoothing: float = setting(
        0.0, check=lambda eps: 0 <= eps < 1, error="{flag} must be in [0, 1)"
    )
    ema: float | None = setting(
        None,
        metavar="DECAY",
        help="evaluate and checkpoint an exponential moving average of the weights (this "
        "decay per step), its BatchNorm statistics recomputed on training images",
        check=lambda decay: 0 < decay < 1,
        error="{flag} must be in (0, 1) (got {value})",
    )
    loss: str | None = setting(  # None: ce for classification, mse for regression
        None,
        choices=LOSSES,
        help="classification: ce = cross-entropy (default), bce = one-logit binary "
        "cross-entropy (2 classes); regression: mse (default) or huber",
    )
    best_by: str = setting(  # regression: always the loss
        "accuracy",
        choices=BEST_BY,
        help="the best checkpoint: highest validation accuracy or lowest validation loss "
        "(regression: always the loss)",
    )
    patience: int | None = setting(
        None,
        metavar="EPOCHS",
        help="early stopping: stop after this many epochs without a better best epoch",
        check=at_least_one,
        error="{flag} must be >= 1 epoch",
    )
    seed: int = setting(
        0, check=lambda seed: 0 <= seed < 2**32, error="{flag} must be in [0, 2**32) (got {value})"
    )
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    image_size: int | None = setting(
        None,
        aliases=("--input-size",),
        help="resize images (clips: each frame) to this square size (default: the weights' "
        "own, else the data's)",
    )
    out: str | None = setting(
        None, help="run folder (default: runs/<date>-<model>-<data>)", resumable=True
    )
    overwrite: bool = setting(
        False,
        help="replace the earlier run in --out: remove the files it wrote (checkpoints, state, "
        "metrics, log, figures) first; without it, an --out that holds a run is an error",
        resumable=True,
    )
    limit_steps: int | None = setting(
        None,
        help="stop after N optimiser steps (smoke tests)",
        check=at_least_one,
        error="{flag} must be >= 1",
        resumable=True,
    )
    quiet: bool = setting(False, help="no progress bar", resumable=True)
    # images: recipes, augmentation (batched on the device when cached, per image when
    # streaming), the decode-once cache, bad files, separate split folders
    recipe: str | None = setting(
        None,
        group=IMAGES,
        choices=tuple(RECIPES),
        help="paper = He et al. 2015 sec. 4.2; fast = best accuracy in a CPU budget; "
        "speedrun = the speed-run network's recipe (most accuracy per second); "
        "tabular = AdamW with early stopping, the default for table files "
        "(flags given still override)",
    )
    crop_padding: int = setting(
        0,
        group=IMAGES,
        help="random crop after padding by N pixels (batched, cached data)",
        check=non_negative,
        error="{flag} must be >= 0 (got {value})",
    )
    padding_mode: str = setting(
        "zeros", group=IMAGES, choices=PADDING_MODES, error="{flag} must be zeros or reflect"
    )
    flip: bool = setting(
        False,
        group=IMAGES,
        negatable=True,
        help="random horizontal flips (streaming: RandomResizedCrop + flip)",
    )
    flip_alternate: bool = setting(
        False,
        group=IMAGES,
        negatable=True,
        help="flip each image in alternate epochs instead of at random",
    )
    cutout: int = setting(
        0,
        group=IMAGES,
        metavar="N",
        help="cutout square of N pixels",
        check=non_negative,
        error="{flag} must be >= 0 (got {value})",
    )
    auto_augment: str | None = setting(
        None,
        group=IMAGES,
        choices=AUTO_AUGMENTS,
        help="streaming pipeline: TrivialAugmentWide or RandAugment",
        error="{flag} must be trivial or randaugment",
    )
    random_erasing: float = setting(
        0.0,
        group=IMAGES,
        metavar="P",
        help="streaming pipeline: random erasing probability",
        check=lambda p: 0 <= p <= 1,
        error="{flag} must be a probability in [0, 1]",
    )
    mixup: float = setting(
        0.0,
        group=IMAGES,
        metavar="ALPHA",
        check=non_negative,
        error="--mixup and --cutmix alphas must be >= 0",
    )
    cutmix: float = setting(
        0.0,
        group=IMAGES,
        metavar="ALPHA",
        check=non_negative,
        error="--mixup and --cutmix alphas must be >= 0",
    )
    tta: str | None = setting(
        None,
        group=IMAGES,
        choices=TTAS,
        help="test-time augmentation for the final evaluation (per-epoch validation is plain)",
        error="{flag} must be flip",
    )
    cache_dir: str | None = setting(
        None,
        group=IMAGES,
        help="decoded-image cache (default: $RESNETLAB_CACHE_DIR or ~/.cache/resnetlab)",
        resumable=True,
    )
    cache_mem: float | None = setting(
        None,
        group=IMAGES,
        metavar="GIB",
        help="largest decoded dataset kept in memory (default: 1/4 of RAM, <= 4; 0: stream)",
        check=non_negative,
        error="{flag} must be >= 0 (GiB)",
    )
    strict: bool = setting(
        False,
        group=IMAGES,
        help="stop before training if any image file or shard is bad, or any table row (or "
        "image Parquet row) lacks a target",
    )
    val_dir: str | None = setting(None, group=IMAGES, help="a separate validation folder")
    test_dir: str | None = setting(None, group=IMAGES, help="a separate test folder")
    image_column: str | None = setting(
        None,
        group=IMAGES,
        metavar="NAME",
        help="image Parquet: the column of encoded images, where several hold images",
    )
    # tables: reading, preprocessing, the task, class weights, the comparison with scikit-learn
    delimiter: str | None = setting(
        None,
        group=TABLES,
        help="(default: sniffed)",
        check=lambda text: len(text) == 1,
        error="{flag} must be one character (got {value!r})",
    )
    categorical: list[str] | None = setting(
        None,
        group=TABLES,
        parse=_column_list,
        metavar="COL,...",
        help="also one-hot encode these columns (text columns always are)",
    )
    max_categories: int = setting(
        50,
        group=TABLES,
        help="a categorical column with more distinct values is dropped, with a warning",
        check=at_least_one,
        error="{flag} must be at least 1",
    )
    numeric_transform: str = setting(
        "standard",
        group=TABLES,
        choices=NUMERIC_TRANSFORMS,
        help="numeric columns: standardise, or map through the training quantiles to a normal",
    )
    task: str | None = setting(  # None: from the target column (data.tabular.infer_task)
        None,
        group=TABLES,
        choices=TASKS,
        help="(default: regression for a fractional target or one of more than 20 whole numbers)",
    )
    class_weight: str | None = setting(
        None,
        group=TABLES,
        choices=CLASS_WEIGHTS,
        help="weight each class's loss by n / (classes x its rows)",
        error="{flag} must be balanced",
    )
    baselines: bool = setting(
        False,
        group=TABLES,
        help="also fit scikit-learn's linear model and gradient boosting on the same split; "
        "writes baselines.json",
    )
    # the machine
    precision: str = setting(
        "auto",
        choices=PRECISIONS,
        help="autocast precision; auto = bf16 where a GPU has it natively (fp16 below that) or a "
        "CPU measures it faster than fp32 (default: %(default)s)",
    )
    device: str = setting("auto", help=DEVICE_HELP)
    workers: int = setting(
        0,
        help="DataLoader worker processes",
        check=non_negative,
        error="{flag} must be >= 0 (got {value})",
        resumable=True,
    )
    compile: str = setting(
        "off",
        choices=COMPILE_CHOICES,
        help="torch.compile the training step (inference: with freezing); "
        f"{AUTO_RULE} (default: %(default)s)",
        error="{flag} must be auto, on or off",
    )
    time_budget: float | None = setting(  # minutes: sets epochs (and limit_steps) to fit
        None,
        metavar="MINUTES",
        help="fit the whole run to this wall-clock time: the first steps' speed sets --epochs "
        "(and --limit-steps, to cut the last epoch), written to config.yaml; wins over --epochs",
        check=lambda minutes: 0 < minutes < 1e6,
        error="{flag} must be a positive number of minutes (got {value})",
    )
    # long runs: the training state, resuming it, non-finite losses, clipping, many processes,
    # TensorBoard
    resume: str | None = setting(
        None,
        group=LONG_RUNS,
        metavar="RUN_DIR",
        help="continue the run in this folder from its training state (state.pt), with its "
        "settings; on the CPU it ends bit-identical to a run that never stopped",
        resumable=True,
    )
    save_every: int | None = setting(
        None,
        group=LONG_RUNS,
        metavar="N",
        help="also save the training state every N steps (it is always saved each epoch)",
        check=at_least_one,
        error="{flag} must be >= 1 step",
        resumable=True,
    )
    save_every_minutes: float | None = setting(
        None,
        group=LONG_RUNS,
        metavar="M",
        help="also save the training state every M minutes",
        check=positive,
        error="{flag} must be positive",
        resumable=True,
    )
    on_nan: str = setting(
        "stop",
        group=LONG_RUNS,
        choices=ON_NAN,
        help="a non-finite loss stops the run, keeping the last good state (default), or its "
        "step is skipped",
    )
    max_nan_steps: int = setting(
        10,
        group=LONG_RUNS,
        metavar="N",
        help="--on-nan skip: stop after N skipped steps (default: %(default)s)",
        check=at_least_one,
        error="{flag} must be >= 1",
    )
    clip_grad: float | None = setting(
        None,
        group=LONG_RUNS,
        metavar="NORM",
        help="clip gradients to this global norm; metrics.jsonl gets their mean norm",
        check=positive,
        error="{flag} must be positive",
    )
    resume_any_world: bool = setting(
        False,
        group=LONG_RUNS,
        help="resume with another number of torchrun processes (the run is no longer exact)",
        resumable=True,
    )
    dist_timeout: float = setting(
        DIST_TIMEOUT,
        group=LONG_RUNS,
        metavar="SECONDS",
        help="torchrun: a process that waits this long in a collective (another machine "
        "killed or cut off) stops the run with a line naming the lost rank; the last state "
        "stays on rank 0's disk for --resume (default: %(default)s)",
        check=positive,
        error="{flag} must be a positive number of seconds (got {value})",
        resumable=True,
    )
    sync_bn: bool = setting(
        False,
        group=LONG_RUNS,
        help="torchrun on GPUs: SyncBatchNorm (on CPUs BatchNorm statistics are averaged "
        "over the processes before each evaluation and checkpoint)",
    )
    tensorboard: bool = setting(
        False,
        group=LONG_RUNS,
        help="write each epoch's scalars to RUN_DIR/tensorboard (needs the tensorboard package)",
        resumable=True,
    )
    # starting weights, and the normalisation they were trained with if they carry none
    weights: str | None = setting(
        None,
        metavar="FILE",
        help="start from these weights: a resnetlab checkpoint, a torchvision/timm state dict "
        "or a CIFAR training script's checkpoint (.pth, .pt, .th, .safetensors)",
    )
    mean: list[float] | None = setting(
        None, metavar="X", help=_normalisation_help("0.485 0.456 0.406")
    )
    std: list[float] | None = setting(
        None, metavar="X", help=_normalisation_help("0.229 0.224 0.225")
    )

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid value: each setting's
        own check, then those across settings (reads no file: a run reads its --weights with
        ``read_weights`` before making its folder)."""
        check_settings(self)
        if self.nesterov and self.momentum <= 0:
            raise ResnetlabError("--nesterov needs a --momentum above 0")
        if self.loss not in (None, "ce") and (self.mixup or self.cutmix):
            raise ResnetlabError("--mixup/--cutmix need --loss ce (they make soft class targets)")
        if self.weights:
            check_preprocessing_flags(self.mean, self.std, self.image_size)
        elif self.model == AUTO_MODEL or self.mean or self.std:
            raise ResnetlabError(
                f"--model {AUTO_MODEL}, --mean and --std describe --weights, which is not given"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as written to config.yaml and the checkpoint header."""
        return asdict(self)


def check_preprocessing_flags(
    mean: list[float] | None, std: list[float] | None, input_size: int | None = None
) -> None:
    """Raise a ResnetlabError naming the flag unless ``--mean``/``--std`` come together, one
    positive std per mean, and ``--input-size`` is positive."""
    if (mean is None) != (std is None):
        raise ResnetlabError("--mean and --std go together: give both or neither")
    if (
        mean is not None
        and std is not None
        and (len(mean) != len(std) or not all(s > 0 for s in std))
    ):
        raise ResnetlabError(
            f"--std must give one positive value per --mean value (got mean {mean}, std {std})"
        )
    if input_size is not None and input_size < 1:
        raise ResnetlabError(f"--input-size must be a positive integer (got {input_size})")


MIN_SWEEP_STEPS = 10  # lr-find: steps needed before a suggestion means anything


@dataclass(frozen=True)
class LrRange:
    """`lr-find`'s sweep: ``steps`` lrs spaced evenly in log from ``start_lr`` to ``end_lr``."""

    start_lr: float = setting(1e-7, help="first lr of the sweep (default: 1e-7)")
    end_lr: float = setting(10.0, help="last lr of the sweep (default: 10)")
    steps: int = setting(
        100,
        help="optimiser steps in the sweep (default: %(default)s)",
        check=lambda steps: steps >= MIN_SWEEP_STEPS,
        error=f"{{flag}} must be at least {MIN_SWEEP_STEPS} (got {{value}})",
    )

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of an invalid value."""
        check_settings(self)
        if not 0 < self.start_lr < self.end_lr:
            raise ResnetlabError(
                f"--start-lr must be positive and below --end-lr "
                f"(got {self.start_lr:g} and {self.end_lr:g})"
            )

    def lr(self, step: int) -> float:
        """The lr of optimiser step ``step`` (0-based)."""
        return self.start_lr * (self.end_lr / self.start_lr) ** (step / (self.steps - 1))
