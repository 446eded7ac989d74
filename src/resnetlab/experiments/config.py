"""The experiments' settings: one dataclass each, with the defaults the CLI shows.

Light on purpose (no torch), so that `resnetlab --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from resnetlab.engine.recipes import recipe_defaults
from resnetlab.errors import ResnetlabError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10" / "train"
PAPER = recipe_defaults("paper")  # sec. 4.2: 45k/5k split, lr 0.1 / 10 at 32k and 48k, 64k steps


def networks_for(depths: Sequence[int]) -> tuple[str, ...]:
    """``plain<d>`` and ``resnet<d>`` for each depth ``d``: the paper's pairs of twins."""
    return tuple(f"{prefix}{d}" for prefix in ("plain", "resnet") for d in depths)


def _check_positive(values: Sequence[tuple[str, int | None]]) -> None:
    """Raise ResnetlabError naming the first flag whose value is below 1 (None is unset)."""
    for flag, value in values:
        if value is not None and value < 1:
            raise ResnetlabError(f"{flag} must be at least 1 (got {value})")


@dataclass(frozen=True)
class Preset:
    """What a degradation mode uses for the settings the user leaves unset."""

    depths: tuple[int, ...]  # plain<d> and resnet<d> for each depth d
    subset: int | None  # training images (None: all)
    val_subset: int | None  # validation images (None: all)
    image_size: int | None  # side the images are resized to (None: as they are)
    batch_size: int
    epochs: int | None  # None: as many as ``iterations`` needs
    iterations: int | None  # optimiser steps (None: ``epochs`` full passes)
    augment: bool  # the paper's 4-pixel padded crops and horizontal flips
    warmup_epochs: float  # linear lr warmup
    zero_init_residual: bool  # ResNets start with each residual branch's last BN at zero
    schedule: str  # lr schedule (engine.optim.lr_factor): "step" is the paper's


# The paper's schedule and data (sec. 4.2), on a GPU about an hour per network.
FULL = Preset(
    depths=(20, 32, 44, 56), subset=None, val_subset=None, image_size=None,
    batch_size=PAPER["batch_size"], epochs=None, iterations=PAPER["limit_steps"], augment=True,
    warmup_epochs=0.0, zero_init_residual=False, schedule=PAPER["schedule"],
)  # fmt: skip
# Two depths of each kind, 7,030 iterations each, in under 20 minutes on two CPU cores with
# native bf16 (AVX-512 BF16 or AMX; about an hour on an AVX2-only CPU): all 45,000 training
# images at 16x16 (a quarter of the arithmetic), batch 64, 10 epochs, no augmentation. Measured
# on the ResNets (one-cycle, seed 0): with 10,000 images both depths memorise their subset at
# the same pace (6.9% against 5.8% training error), and with 2,000 iterations on all images
# ResNet-56 with the paper's initialisation trails ResNet-20 (33.6% against 30.3%; deep ResNets
# overtake later in training). Here ResNet-56 has the iterations to overtake: it ends 4.8
# points below ResNet-20 (9.0% against 13.8%; seed 1: 9.0% against 13.7%). One-cycle (a
# one-epoch warmup, then a cosine to zero) fits the same iterations far better than the
# paper's steps; each residual branch starts at zero (Goyal et al. 2017, sec. 5.1), so every
# ResNet starts as a shallow network.
FAST = Preset(
    depths=(20, 56), subset=None, val_subset=1_000, image_size=16, batch_size=64,
    epochs=10, iterations=None, augment=False, warmup_epochs=1.0, zero_init_residual=True,
    schedule="onecycle",
)  # fmt: skip


@dataclass
class DegradationConfig:
    """Networks, data and schedule of the degradation experiment (He et al. 2015, Fig. 6).
    ``None`` settings take the mode's preset (``FAST`` or ``FULL``)."""

    data: str = str(DEFAULT_DATA)
    networks: tuple[str, ...] = ()  # empty: plain<d> and resnet<d> for each of ``depths``
    depths: tuple[int, ...] | None = None
    fast: bool = False
    subset: int | None = None
    val_subset: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    iterations: int | None = None
    augment: bool | None = None
    warmup_epochs: float | None = None
    zero_init_residual: bool | None = None
    schedule: str | None = None
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    workers: int = 0
    out: str | None = None
    quiet: bool = False

    def resolved(self) -> DegradationConfig:
        """This config with the networks spelt out and unset settings taken from the preset
        (``epochs`` and ``iterations`` together: giving either replaces both)."""
        preset = FAST if self.fast else FULL
        unset = {
            f.name: getattr(preset, f.name) for f in fields(Preset) if getattr(self, f.name) is None
        }
        if self.epochs is not None or self.iterations is not None:
            unset.pop("epochs", None)
            unset.pop("iterations", None)
        resolved = replace(self, **unset)
        return replace(resolved, networks=tuple(self.networks) or networks_for(resolved.depths))

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        if not (self.networks or self.depths):
            raise ResnetlabError("--networks/--depths: no networks to train")
        _check_positive([
            ("--subset", self.subset), ("--val-subset", self.val_subset),
            ("--image-size", self.image_size), ("--batch-size", self.batch_size),
            ("--epochs", self.epochs), ("--iterations", self.iterations),
        ])  # fmt: skip
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ResnetlabError(f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})")


@dataclass
class GradientConfig:
    """Networks, data and training of the gradient-flow experiment."""

    data: str = "digits"
    networks: tuple[str, ...] = ()  # empty: plain<d> and resnet<d> for each of ``depths``
    depths: tuple[int, ...] = (56, 110)
    steps: int = 50
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    out: str | None = None

    @property
    def network_names(self) -> tuple[str, ...]:
        """``networks``, or the plain and residual network of each of ``depths``."""
        return tuple(self.networks) or networks_for(self.depths)

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        if not self.network_names:
            raise ResnetlabError("--networks/--depths: no networks to measure")
        _check_positive([("--steps", self.steps), ("--batch-size", self.batch_size)])
        if self.lr <= 0:
            raise ResnetlabError(f"--lr must be positive (got {self.lr})")


@dataclass
class CaseStudyConfig:
    """Seeds, epochs and batch size (the article gives none) of the article's case study."""

    seeds: int = 5
    epochs: int = 10
    batch_size: int = 32
    out: str | None = None

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        _check_positive([
            ("--seeds", self.seeds), ("--epochs", self.epochs), ("--batch-size", self.batch_size)
        ])  # fmt: skip


@dataclass
class VideoConfig:
    """Networks, data and schedule of the video experiment: ``moving-digits`` at
    ``image_size`` (half its 64x64 frames by default, a quarter of the arithmetic)."""

    model: str = "r3d_10_small"
    frame_model: str = "fr2d_10_small"
    image_size: int = 32
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    limit_steps: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # 400 test clips: a guess stays within 5 points of 50% (2 sd)
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    workers: int = 0
    out: str | None = None
    quiet: bool = False

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        _check_positive([
            ("--image-size", self.image_size), ("--epochs", self.epochs),
            ("--batch-size", self.batch_size), ("--limit-steps", self.limit_steps),
        ])  # fmt: skip
        if not (
            self.val_fraction >= 0
            and self.test_fraction > 0
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ResnetlabError(
                "--val-fraction >= 0 and --test-fraction > 0 (the runs share its test split) "
                f"must leave clips to train on (got {self.val_fraction}, {self.test_fraction})"
            )
        if self.lr <= 0:
            raise ResnetlabError(f"--lr must be positive (got {self.lr})")
