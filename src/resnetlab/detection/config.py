"""`detect train`'s configuration: one dataclass whose fields are its flags, each declared once
with its help and check (``resnetlab.settings``; free of torch, so that ``--help`` stays
instant)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from resnetlab.config.train import TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.settings import at_least_one, check_settings, non_negative, positive, setting, shared

DETECTORS = ("fasterrcnn", "retinanet", "fcos")
NORMS = ("auto", "bn", "gn", "frozen")  # auto: frozen from --weights, else gn
OPTIMIZERS = ("sgd", "adamw")
SHAPES = "shapes"
_CHOICE = "{flag} {value!r}: use one of {choices}"
_AT_LEAST_ONE = "{flag} {value}: need 1 or more"
_STEP_SIZES = "--lr must be positive, --weight-decay and --warmup-steps not negative"


def _fraction(share: float) -> bool:
    return 0 < share < 0.5


@dataclass
class DetectConfig:
    """Everything that defines a detection training run."""

    data: str = setting(
        SHAPES,
        help="shapes (built-in, synthetic) or a folder with images and a COCO annotations "
        "JSON (annotations.json, or its only .json file)",
    )
    model: str = setting("resnet18", help="backbone: any 2-D resnetlab network")
    detector: str = setting("fasterrcnn", choices=DETECTORS, error=_CHOICE)
    weights: str | None = setting(
        None,
        help="start the backbone from a classifier: a resnetlab checkpoint or a "
        "torchvision/timm state dict (its head is dropped)",
    )
    norm: str = setting(
        "auto",
        choices=NORMS,
        help="backbone normalisation: auto = frozen BatchNorm from --weights, GroupNorm (gn) "
        "from scratch (default: auto)",
        error=_CHOICE,
    )
    trainable_stages: int | None = setting(  # None: every level from scratch, 3 from --weights
        None,
        help="feature levels that train, counted from the deepest (stem included); "
        "default: all from scratch, 3 from --weights",
        check=non_negative,
        error="{flag} {value}: need 0 or more",
    )
    image_size: int = setting(
        256,
        help="longest side, px",
        check=lambda side: side >= 32,
        error="{flag} {value}: need at least 32 px",
    )
    epochs: int = setting(6, check=at_least_one, error=_AT_LEAST_ONE)
    batch_size: int = setting(4, check=at_least_one, error=_AT_LEAST_ONE)
    optimizer: str = setting("sgd", choices=OPTIMIZERS, error=_CHOICE)
    lr: float = setting(0.02, check=positive, error=_STEP_SIZES)
    weight_decay: float = setting(1e-4, check=non_negative, error=_STEP_SIZES)
    warmup_steps: int = setting(100, check=non_negative, error=_STEP_SIZES)
    seed: int = 0
    val_fraction: float = setting(  # the share of images held out for validation
        0.1, help="COCO data", check=_fraction, error="{flag} must lie in (0, 0.5)"
    )
    test_fraction: float = setting(  # and for the test
        0.1, help="COCO data", check=_fraction, error="{flag} must lie in (0, 0.5)"
    )
    save_every: int = setting(
        100, help="steps between states", check=at_least_one, error=_AT_LEAST_ONE
    )
    limit: int | None = setting(None, help="keep the first N images of each split (trials)")
    device: str = shared(TrainConfig, "device")
    out: str | None = setting(
        None, help="run folder (default: runs/<date-time>-<detector>-<model>-<data>)"
    )
    overwrite: bool = shared(TrainConfig, "overwrite")
    resume: str | None = setting(None, metavar="RUN_DIR", help="continue this run")
    dist_timeout: float = shared(TrainConfig, "dist_timeout")

    def validate(self) -> None:
        """A one-line error naming the flag of an impossible value."""
        check_settings(self)
        if self.norm == "frozen" and not self.weights:
            raise ResnetlabError(
                "--norm frozen needs --weights: frozen statistics of random weights disable "
                "normalisation"
            )

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
