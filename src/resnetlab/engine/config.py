"""The training configuration: one dataclass whose fields map one to one onto CLI flags."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from resnetlab.errors import ResnetlabError

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


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow the article's recipe
    (SGD, lr 0.1, momentum 0.9, weight decay 5e-4) with a one-cycle schedule."""

    command: ClassVar[str] = "train"  # the CLI command that runs this config

    model: str = "resnet20"
    data: str = "mnist5k"
    target: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128  # 0: from the training split's size (``training.auto_batch_size``)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    loss: str | None = None  # None: ce for classification, mse for regression
    precision: str = "auto"
    device: str = "auto"
    compile: str = "off"
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    image_size: int | None = None
    workers: int = 0
    out: str | None = None
    limit_steps: int | None = None
    time_budget: float | None = None  # minutes: sets epochs (and limit_steps) to fit
    quiet: bool = False
    # image data: augmentation (batched on the device when cached, per image when streaming)
    crop_padding: int = 0
    padding_mode: str = "zeros"
    flip: bool = False
    flip_alternate: bool = False
    cutout: int = 0
    auto_augment: str | None = None
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    tta: str | None = None
    ema: float | None = None  # evaluate an EMA of the weights, of this decay per step
    # image folders: decode-once cache, bad files, separate split folders
    cache_dir: str | None = None
    cache_mem: float | None = None
    strict: bool = False
    val_dir: str | None = None
    test_dir: str | None = None
    recipe: str | None = None
    # tables: reading, preprocessing, the task, class weights, the comparison with scikit-learn
    delimiter: str | None = None  # None: sniffed
    categorical: list[str] | None = None  # also one-hot these (numeric) columns
    max_categories: int = 50
    numeric_transform: str = "standard"
    task: str | None = None  # None: from the target column (``data.tabular.infer_task``)
    class_weight: str | None = None
    baselines: bool = False
    # which epoch is best (a validation split's accuracy or loss), and early stopping
    best_by: str = "accuracy"  # regression: always the loss
    patience: int | None = None  # stop after this many epochs without a better best
    # long runs: the training state, resuming it, non-finite losses, clipping, TensorBoard
    resume: str | None = None  # a run folder to continue
    save_every: int | None = None  # also save the state every N optimiser steps
    save_every_minutes: float | None = None  # ... and every M minutes
    on_nan: str = "stop"
    max_nan_steps: int = 10  # --on-nan skip: the run stops after this many skipped steps
    clip_grad: float | None = None  # clip gradients to this global norm
    tensorboard: bool = False
    # many processes (torchrun)
    sync_bn: bool = False  # GPUs: SyncBatchNorm
    resume_any_world: bool = False  # resume with another number of processes (not exact)
    # starting weights, and the normalisation they were trained with if they carry none
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid value (reads no file: a
        run reads its --weights with ``read_weights`` before making its folder)."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (
                self.batch_size == 0 or self.batch_size >= 2,
                f"--batch-size must be 0 (from the data) or at least 2, for BatchNorm's batch "
                f"statistics (got {self.batch_size})",
            ),
            (0 <= self.seed < 2**32, f"--seed must be in [0, 2**32) (got {self.seed})"),
            (self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})"),
            (not self.nesterov or self.momentum > 0, "--nesterov needs a --momentum above 0"),
            (
                0 <= self.warmup_epochs < math.inf,
                f"--warmup-epochs must be >= 0 and finite (got {self.warmup_epochs})",
            ),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
            (self.limit_steps is None or self.limit_steps >= 1, "--limit-steps must be >= 1"),
            (
                self.time_budget is None or 0 < self.time_budget < 1e6,
                f"--time-budget must be a positive number of minutes (got {self.time_budget})",
            ),
            (self.ema is None or 0 < self.ema < 1, f"--ema must be in (0, 1) (got {self.ema})"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.loss in (None, *LOSSES), f"--loss must be one of {', '.join(LOSSES)}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.compile in COMPILE_CHOICES, "--compile must be auto, on or off"),
            (self.crop_padding >= 0, f"--crop-padding must be >= 0 (got {self.crop_padding})"),
            (self.cutout >= 0, f"--cutout must be >= 0 (got {self.cutout})"),
            (self.padding_mode in PADDING_MODES, "--padding-mode must be zeros or reflect"),
            (
                self.auto_augment in (None, *AUTO_AUGMENTS),
                "--auto-augment must be trivial or randaugment",
            ),
            (0 <= self.random_erasing <= 1, "--random-erasing must be a probability in [0, 1]"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix alphas must be >= 0"),
            (
                self.loss in (None, "ce") or not (self.mixup or self.cutmix),
                "--mixup/--cutmix need --loss ce (they make soft class targets)",
            ),
            (self.tta in (None, *TTAS), "--tta must be flip"),
            (self.cache_mem is None or self.cache_mem >= 0, "--cache-mem must be >= 0 (GiB)"),
            (self.save_every is None or self.save_every >= 1, "--save-every must be >= 1 step"),
            (
                self.save_every_minutes is None or self.save_every_minutes > 0,
                "--save-every-minutes must be positive",
            ),
            (self.on_nan in ON_NAN, f"--on-nan must be one of {', '.join(ON_NAN)}"),
            (self.max_nan_steps >= 1, "--max-nan-steps must be >= 1"),
            (self.clip_grad is None or self.clip_grad > 0, "--clip-grad must be positive"),
            (self.class_weight in (None, *CLASS_WEIGHTS), "--class-weight must be balanced"),
            (self.best_by in BEST_BY, f"--best-by must be one of {', '.join(BEST_BY)}"),
            (self.patience is None or self.patience >= 1, "--patience must be >= 1 epoch"),
            (self.task in (None, *TASKS), f"--task must be one of {', '.join(TASKS)}"),
            (
                self.numeric_transform in NUMERIC_TRANSFORMS,
                f"--numeric-transform must be one of {', '.join(NUMERIC_TRANSFORMS)}",
            ),
            (self.max_categories >= 1, "--max-categories must be at least 1"),
            (
                self.delimiter is None or len(self.delimiter) == 1,
                f"--delimiter must be one character (got {self.delimiter!r})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ResnetlabError(message)
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
