"""Fine-tuning's plan, free of torch: the strategies and BatchNorm policies, the phases of a
strategy (``plan_phases``) and ``FinetuneConfig``; ``training/phases.py`` says what trains in
each, and ``training/run.py`` trains them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resnetlab.config.train import AUTO_MODEL, TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.settings import positive, setting, shared

STRATEGIES = ("gradual", "lp-ft", "full", "linear-probe")
BN_POLICIES = ("train", "freeze-stats", "frozen")


@dataclass(frozen=True)
class Phase:
    """One phase of a run (``train_phase`` in ``training/run.py``): its epochs, and the lrs of
    the classifier and the backbone (``backbone_lr`` None: the backbone is frozen)."""

    name: str  # "head" (only the classifier trains) or "all"
    epochs: int
    head_lr: float
    backbone_lr: float | None

    @property
    def trains_backbone(self) -> bool:
        """Whether the backbone's parameters train in this phase."""
        return self.backbone_lr is not None


def plan_phases(
    strategy: str,
    epochs: int,
    lr: float,
    backbone_lr_mult: float,
    head_epochs: int | None = None,
) -> list[Phase]:
    """The phases of ``strategy`` over ``epochs`` epochs in all (see ``training/phases.py``)."""
    if strategy == "linear-probe":
        return [Phase("head", epochs, lr, None)]
    if strategy == "full":
        return [Phase("all", epochs, lr, lr * backbone_lr_mult)]
    if strategy not in STRATEGIES:
        choices = ", ".join(STRATEGIES)
        raise ResnetlabError(f"--strategy must be one of {choices} (got {strategy!r})")
    if head_epochs is None:
        head_epochs = 1 if strategy == "gradual" else max(1, epochs // 2)
    if not 1 <= head_epochs < epochs:
        raise ResnetlabError(
            f"--strategy {strategy}: --head-epochs ({head_epochs}) must be at least 1 and "
            f"below --epochs ({epochs}), to leave epochs for the whole network"
        )
    if strategy == "gradual":
        tuned = Phase("all", epochs - head_epochs, lr / 2, lr / 2 * backbone_lr_mult)
    else:
        tuned = Phase("all", epochs - head_epochs, lr * backbone_lr_mult, lr * backbone_lr_mult)
    return [Phase("head", head_epochs, lr, None), tuned]


@dataclass
class FinetuneConfig(TrainConfig):
    """A training run that starts from ``weights``. The defaults suit a small dataset: the
    ``gradual`` strategy (fastai's ``fine_tune``) over 20 epochs, AdamW with fastai's base lr
    2e-3, the backbone at half the head's lr (see ``resnetlab.training.phases``); on the
    CIFAR-10 transfer benchmark (``benchmarks/finetune_transfer.py``) these beat the lower
    backbone lrs usual for ImageNet weights, since a small net's features must move more.
    Its own settings follow ``TrainConfig``'s."""

    command: ClassVar[str] = "finetune"

    data: str = shared(
        TrainConfig,
        "data",
        default="",
        check=bool,
        error="finetune needs --data (a built-in name, a CSV file or a folder)",
    )
    model: str = setting(  # the weights' architecture: header, else inferred from the keys
        AUTO_MODEL,
        help="model name (default: the weights' header's, else inferred from their keys)",
    )
    strategy: str = setting(
        "gradual",
        help="gradual (default): the head only for --head-epochs, then everything at half "
        "the lr (fastai's fine_tune); lp-ft: linear probe, then everything at the backbone's "
        "lr (Kumar et al. 2022); full: everything, the backbone at a lower lr; "
        "linear-probe: the head only",
        check=lambda strategy: strategy in STRATEGIES,
        error=f"{{flag}} must be one of {', '.join(STRATEGIES)}",
    )
    bn: str = setting(
        "train",
        help="BatchNorm while the backbone trains: train (default; batch statistics), "
        "freeze-stats (running statistics kept) or frozen (FrozenBatchNorm2d)",
        check=lambda policy: policy in BN_POLICIES,
        error=f"{{flag}} must be one of {', '.join(BN_POLICIES)}",
    )
    head_epochs: int | None = setting(  # gradual: 1, lp-ft: half of epochs
        None,
        help="gradual and lp-ft: epochs that train only the head "
        "(default: 1 for gradual, half of --epochs for lp-ft)",
    )
    backbone_lr_mult: float = setting(
        0.5,
        help="the backbone's lr is this times the head's (default: %(default)s)",
        check=positive,
        error="{flag} must be positive (got {value}; --strategy linear-probe freezes the "
        "backbone)",
    )
    stage_decay: float = setting(  # lr factor per stage towards the stem (1: none)
        1.0,
        help="each earlier backbone stage trains at this times the next one's lr "
        "(default: 1, no decay)",
        check=lambda decay: 0 < decay <= 1,
        error="{flag} must be in (0, 1] (got {value})",
    )
    epochs: int = shared(TrainConfig, "epochs", default=20)
    batch_size: int = shared(TrainConfig, "batch_size", default=64)
    optimizer: str = shared(TrainConfig, "optimizer", default="adamw")
    lr: float = shared(TrainConfig, "lr", default=2e-3)
    weight_decay: float = shared(TrainConfig, "weight_decay", default=0.01)

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid value (reads no file)."""
        if not self.weights:
            raise ResnetlabError("finetune needs --weights FILE")
        super().validate()
        self.phases()

    def phases(self) -> list[Phase]:
        """The strategy's phases over ``epochs`` (an error for impossible ``head_epochs``)."""
        return plan_phases(
            self.strategy, self.epochs, self.lr, self.backbone_lr_mult, self.head_epochs
        )
