"""The experiments' settings: one dataclass each, whose fields are the experiment's flags
(``resnetlab.settings``).

Light on purpose (no torch), so that `resnetlab --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from resnetlab.config.recipes import recipe_defaults
from resnetlab.config.train import SCHEDULES, TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.settings import at_least_one, check_settings, non_negative, positive, setting, shared

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10" / "train"
PAPER = recipe_defaults("paper")  # sec. 4.2: 45k/5k split, lr 0.1 / 10 at 32k and 48k, 64k steps


def networks_for(depths: Sequence[int]) -> tuple[str, ...]:
    """``plain<d>`` and ``resnet<d>`` for each depth ``d``: the paper's pairs of twins."""
    return tuple(f"{prefix}{d}" for prefix in ("plain", "resnet") for d in depths)


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
    schedule: str  # lr schedule (training.optim.lr_factor): "step" is the paper's


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


def _depths(source: Preset) -> str:
    return " ".join(map(str, source.depths))


def _depths_help(shown: str) -> str:
    return f"train plain<N> and resnet<N> for each N (default: {shown})"


_AT_LEAST_ONE = "{flag} must be at least 1 (got {value})"
_POSITIVE = "{flag} must be positive (got {value})"


@dataclass
class DegradationConfig:
    """Networks, data and schedule of the degradation experiment (He et al. 2015, Fig. 6).
    ``None`` settings take the mode's preset (``FAST`` or ``FULL``)."""

    data: str = setting(str(DEFAULT_DATA), help="image folder (default: %(default)s)")
    fast: bool = setting(
        False,
        help=f"all training images and {FAST.val_subset} validation images at "
        f"{FAST.image_size}x{FAST.image_size}, depths {_depths(FAST)}, {FAST.epochs} epochs of "
        f"{FAST.schedule}: under 20 minutes on two CPU cores with native bf16",
    )
    networks: tuple[str, ...] = setting(  # empty: plain<d> and resnet<d> for each of ``depths``
        (),
        metavar="NAME",
        help="CIFAR networks to compare, e.g. plain20 resnet20 (default: from --depths)",
    )
    depths: tuple[int, ...] | None = setting(
        None,
        metavar="N",
        help=_depths_help(f"{_depths(FULL)}; {_depths(FAST)} with --fast"),
    )
    subset: int | None = setting(
        None, help="training images (stratified, seeded)", check=at_least_one, error=_AT_LEAST_ONE
    )
    val_subset: int | None = setting(
        None,
        help="validation images (stratified, seeded)",
        check=at_least_one,
        error=_AT_LEAST_ONE,
    )
    image_size: int | None = setting(
        None, help="resize images to N x N", check=at_least_one, error=_AT_LEAST_ONE
    )
    batch_size: int | None = setting(
        None, help=f"(default: {FULL.batch_size})", check=at_least_one, error=_AT_LEAST_ONE
    )
    epochs: int | None = setting(
        None,
        help="epochs (default: as --iterations needs)",
        check=at_least_one,
        error=_AT_LEAST_ONE,
    )
    iterations: int | None = setting(
        None,
        help=f"stop after N steps (default: {FULL.iterations})",
        check=at_least_one,
        error=_AT_LEAST_ONE,
    )
    augment: bool | None = setting(
        None, negatable=True, help="4-pixel padded crops and flips (default: on, off with --fast)"
    )
    warmup_epochs: float | None = setting(
        None,
        help=f"linear lr warmup (default: {FULL.warmup_epochs:g})",
        check=non_negative,
        error="{flag} must be >= 0 (got {value})",
    )
    schedule: str | None = setting(
        None,
        choices=SCHEDULES,
        help=f"lr schedule (default: {FULL.schedule}, the paper's; {FAST.schedule} with --fast)",
    )
    zero_init_residual: bool | None = setting(
        None,
        negatable=True,
        help="start each residual branch at zero (default: off, on with --fast)",
    )
    seed: int = 0
    out: str | None = setting(None, help="output folder (default: runs/<date-time>-<experiment>)")
    overwrite: bool = shared(TrainConfig, "overwrite")
    quiet: bool = setting(False, help="no progress bars")
    precision: str = shared(TrainConfig, "precision")
    device: str = shared(TrainConfig, "device")
    workers: int = shared(TrainConfig, "workers")

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
        check_settings(self)
        if not (self.networks or self.depths):
            raise ResnetlabError("--networks/--depths: no networks to train")


@dataclass
class GradientConfig:
    """Networks, data and training of the gradient-flow experiment."""

    data: str = setting("digits", help="image data (default: %(default)s)")
    networks: tuple[str, ...] = shared(DegradationConfig, "networks")
    depths: tuple[int, ...] = shared(
        DegradationConfig, "depths", default=(56, 110), help=_depths_help("%(default)s")
    )
    steps: int = setting(
        50,
        help="SGD steps before the second look (%(default)s)",
        check=at_least_one,
        error=_AT_LEAST_ONE,
    )
    batch_size: int = setting(128, check=at_least_one, error=_AT_LEAST_ONE)
    lr: float = setting(
        0.1, help="constant learning rate (%(default)s)", check=positive, error=_POSITIVE
    )
    momentum: float = setting(0.9, cli=False)
    weight_decay: float = setting(1e-4, cli=False)
    device: str = shared(TrainConfig, "device")
    seed: int = 0
    out: str | None = shared(DegradationConfig, "out")
    overwrite: bool = shared(TrainConfig, "overwrite")

    @property
    def network_names(self) -> tuple[str, ...]:
        """``networks``, or the plain and residual network of each of ``depths``."""
        return tuple(self.networks) or networks_for(self.depths)

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        check_settings(self)
        if not self.network_names:
            raise ResnetlabError("--networks/--depths: no networks to measure")


@dataclass
class CaseStudyConfig:
    """Seeds, epochs and batch size (the article gives none) of the article's case study."""

    seeds: int = setting(
        5, help="seeds 0..N-1 (%(default)s)", check=at_least_one, error=_AT_LEAST_ONE
    )
    epochs: int = setting(10, check=at_least_one, error=_AT_LEAST_ONE)
    batch_size: int = setting(32, check=at_least_one, error=_AT_LEAST_ONE)
    out: str | None = setting(None, help="output folder (default: runs/<date-time>-case-study)")
    overwrite: bool = shared(TrainConfig, "overwrite")

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        check_settings(self)


@dataclass
class VideoConfig:
    """Networks, data and schedule of the video experiment: ``moving-digits`` at
    ``image_size`` (half its 64x64 frames by default, a quarter of the arithmetic)."""

    model: str = setting("r3d_10_small", help="3-D network (default: %(default)s)")
    frame_model: str = setting("fr2d_10_small", help="per-frame network (default: %(default)s)")
    image_size: int = setting(
        32, help="frame side (default: %(default)s)", check=at_least_one, error=_AT_LEAST_ONE
    )
    epochs: int = setting(2, check=at_least_one, error=_AT_LEAST_ONE)
    batch_size: int = setting(32, check=at_least_one, error=_AT_LEAST_ONE)
    lr: float = setting(0.05, help="(default: %(default)s)", check=positive, error=_POSITIVE)
    limit_steps: int | None = setting(
        None, help="stop each run after N steps", check=at_least_one, error=_AT_LEAST_ONE
    )
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # 400 test clips: a guess stays within 5 points of 50% (2 sd)
    seed: int = 0
    out: str | None = shared(DegradationConfig, "out")
    overwrite: bool = shared(TrainConfig, "overwrite")
    quiet: bool = shared(DegradationConfig, "quiet")
    precision: str = shared(TrainConfig, "precision")
    device: str = shared(TrainConfig, "device")
    workers: int = shared(TrainConfig, "workers")

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        check_settings(self)
        if not (
            self.val_fraction >= 0
            and self.test_fraction > 0
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ResnetlabError(
                "--val-fraction >= 0 and --test-fraction > 0 (the runs share its test split) "
                f"must leave clips to train on (got {self.val_fraction}, {self.test_fraction})"
            )
