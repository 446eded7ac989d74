"""`detect train`'s configuration: one dataclass whose fields map one to one onto its flags
(free of torch, so that ``--help`` stays instant)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from resnetlab.errors import ResnetlabError

DETECTORS = ("fasterrcnn", "retinanet", "fcos")
NORMS = ("auto", "bn", "gn", "frozen")  # auto: frozen from --weights, else gn
OPTIMIZERS = ("sgd", "adamw")
SHAPES = "shapes"


@dataclass
class DetectConfig:
    """Everything that defines a detection training run."""

    data: str = SHAPES
    model: str = "resnet18"
    detector: str = "fasterrcnn"
    weights: str | None = None
    norm: str = "auto"
    trainable_stages: int | None = None  # None: every level from scratch, 3 from --weights
    image_size: int = 256
    epochs: int = 6
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 0.02
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    val_fraction: float = 0.1  # COCO data: the share of images held out for validation
    test_fraction: float = 0.1  # and for the test
    save_every: int = 100  # steps between training states within an epoch
    limit: int | None = None  # keep the first images of each split (quick trials)
    device: str = "auto"  # cpu, cuda, cuda:1 ... (auto: a GPU where there is one)
    out: str | None = None
    resume: str | None = None

    def validate(self) -> None:
        """A one-line error naming the flag of an impossible value."""
        choices = {"detector": DETECTORS, "norm": NORMS, "optimizer": OPTIMIZERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ResnetlabError(
                    f"--{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}"
                )
        positive = ("epochs", "batch_size", "save_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ResnetlabError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: need 1 or more"
                )
        if self.image_size < 32:
            raise ResnetlabError(f"--image-size {self.image_size}: need at least 32 px")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ResnetlabError(
                "--lr must be positive, --weight-decay and --warmup-steps not negative"
            )
        if self.trainable_stages is not None and self.trainable_stages < 0:
            raise ResnetlabError(f"--trainable-stages {self.trainable_stages}: need 0 or more")
        if self.norm == "frozen" and not self.weights:
            raise ResnetlabError(
                "--norm frozen needs --weights: frozen statistics of random weights disable "
                "normalisation"
            )
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ResnetlabError(f"--{name.replace('_', '-')} must lie in (0, 0.5)")

    @property
    def resolved_norm(self) -> str:
        """``auto``: frozen BatchNorm from trained weights; GroupNorm from scratch, which
        beat BatchNorm at batch 4 (README, "Detection")."""
        if self.norm != "auto":
            return self.norm
        return "frozen" if self.weights else "gn"

    @property
    def resolved_trainable_stages(self) -> int | None:
        """torchvision's default from trained weights: the last three stages train."""
        if self.trainable_stages is not None:
            return self.trainable_stages
        return 3 if self.weights else None

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for config.yaml."""
        return asdict(self)
