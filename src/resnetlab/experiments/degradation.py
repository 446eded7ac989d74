"""The degradation experiment (He et al. 2015, sec. 4.2 and Fig. 6).

Plain CIFAR networks of growing depth and their residual twins are trained with one recipe on
one data set, loaded once. The paper's finding, checked at the end of every run: the deeper
plain network ends with the *higher* training error (degradation: an optimisation problem,
not overfitting), while the deeper residual network ends with the lower one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from resnetlab.data import load_data
from resnetlab.data.bundle import DataBundle, MappedDataset
from resnetlab.engine.config import TrainConfig
from resnetlab.engine.rundir import RunDir
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.common import (
    dataset_tensors,
    describe_network,
    duration,
    experiment_dir,
    network_params,
    networks_for,
    train_on_bundle,
)
from resnetlab.experiments.figures import plot_degradation
from resnetlab.experiments.report import (
    degradation_table,
    recipe_line,
    write_degradation_report,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10" / "train"
VAL_FRACTION = 0.1  # 5,000 of CIFAR-10's 50,000 training images: the paper's 45k/5k split


@dataclass(frozen=True)
class Preset:
    """What a mode uses for the settings the user leaves unset."""

    subset: int | None  # training images (None: all)
    val_subset: int | None  # validation images (None: all)
    epochs: int | None  # None: as many as ``iterations`` needs
    iterations: int | None  # optimiser steps (None: ``epochs`` full passes)
    augment: bool


# The paper's schedule (sec. 4.2): lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k.
FULL = Preset(subset=None, val_subset=None, epochs=None, iterations=64_000, augment=True)
# About 470 iterations on 5,000 images without augmentation: 8 networks in under 20 minutes on
# two CPU cores. Without augmentation a small subset is learnt in a few epochs, so the
# training errors separate by how well each network can be optimised, which is the effect.
FAST = Preset(subset=5_000, val_subset=1_000, epochs=12, iterations=None, augment=False)


@dataclass
class DegradationConfig:
    """The networks, the data and the recipe. ``None`` settings take the mode's preset."""

    data: str = str(DEFAULT_DATA)
    networks: tuple[str, ...] = ()  # empty: plain<d> and resnet<d> for each of ``depths``
    depths: tuple[int, ...] = (20, 32, 44, 56)
    fast: bool = False
    subset: int | None = None
    val_subset: int | None = None
    epochs: int | None = None
    iterations: int | None = None
    augment: bool | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    workers: int = 0
    out: str | None = None
    quiet: bool = False

    def resolved(self) -> DegradationConfig:
        """This config with the networks spelt out and unset settings taken from the preset."""
        preset = FAST if self.fast else FULL
        length_given = self.epochs is not None or self.iterations is not None
        return replace(
            self,
            networks=tuple(self.networks) or networks_for(self.depths),
            subset=preset.subset if self.subset is None else self.subset,
            val_subset=preset.val_subset if self.val_subset is None else self.val_subset,
            epochs=self.epochs if length_given else preset.epochs,
            iterations=self.iterations if length_given else preset.iterations,
            augment=preset.augment if self.augment is None else self.augment,
        )

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid setting."""
        if not self.networks:
            raise ResnetlabError("--networks/--depths: no networks to train")
        for name in self.networks:
            describe_network(name)
        for flag, value in (
            ("--subset", self.subset),
            ("--val-subset", self.val_subset),
            ("--epochs", self.epochs),
            ("--iterations", self.iterations),
        ):
            if value is not None and value < 1:
                raise ResnetlabError(f"{flag} must be at least 1 (got {value})")


@dataclass
class NetworkResult:
    """One trained network: its per-epoch history and cost."""

    name: str
    params: int
    history: list[dict[str, Any]]
    run_dir: Path

    @property
    def train_error(self) -> float:
        """Training error (%) over the last epoch."""
        return 100.0 - self.history[-1]["train_acc"]

    @property
    def val_error(self) -> float | None:
        """Validation error (%) after the last epoch."""
        val_acc = self.history[-1]["val_acc"]
        return None if val_acc is None else 100.0 - val_acc


@dataclass(frozen=True)
class Verdict:
    """Whether a run showed the effect; ``reproduced`` is None when it could not be checked."""

    reproduced: bool | None
    line: str


@dataclass
class DegradationResult:
    """Everything a run produced; the figure, table and JSON are in ``out``."""

    out: Path
    config: DegradationConfig
    networks: dict[str, NetworkResult]
    verdict: Verdict
    elapsed_s: float


def degradation_verdict(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Verdict:
    """Compare the final training errors of the shallowest and deepest network of each kind.

    Reproduced when the deepest plain network ends with a higher training error than the
    shallowest one, and the deepest residual network with a lower one (He et al. 2015, Fig. 6).
    """
    final = {name: 100.0 - h[-1]["train_acc"] for name, h in histories.items() if h}
    by_family: dict[str, list[tuple[int, str]]] = {"plain": [], "residual": []}
    for name in final:
        family, depth = describe_network(name)
        by_family[family].append((depth, name))
    if any(len({depth for depth, _ in nets}) < 2 for nets in by_family.values()):
        needs = "two depths of both plain and residual networks"
        return Verdict(None, f"Degradation not checked: it needs {needs}.")

    def compare(family: str) -> tuple[float, str]:
        (_, shallow), (_, deep) = min(by_family[family]), max(by_family[family])
        gap = final[deep] - final[shallow]
        sign = ">" if gap > 0 else "<" if gap < 0 else "="
        return gap, f"{deep} {final[deep]:.1f}% {sign} {shallow} {final[shallow]:.1f}%"

    plain_gap, plain_text = compare("plain")
    residual_gap, residual_text = compare("residual")
    reproduced = plain_gap > 0 and residual_gap < 0
    return Verdict(
        reproduced,
        f"Degradation {'reproduced' if reproduced else 'not reproduced'}: final training error "
        f"{plain_text} (expected >), {residual_text} (expected <).",
    )


def pad_crop_flip(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """The paper's augmentation (sec. 4.2): pad 4 pixels on each side, crop a random window of
    the original size, and flip it horizontally with probability 1/2."""
    _, height, width = image.shape
    padded = F.pad(image, (pad, pad, pad, pad))
    top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    crop = padded[:, top : top + height, left : left + width]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


def run_degradation(cfg: DegradationConfig) -> DegradationResult:
    """Train every network of ``cfg`` on the same data; write the figure, table and JSON.

    The outputs are rewritten after each network, so a stopped run keeps what it has.
    """
    cfg = cfg.resolved()
    cfg.validate()
    log = RunDir(experiment_dir(cfg.out, "degradation"), quiet=cfg.quiet)
    try:
        return _run(cfg, log)
    finally:
        log.close()


def _run(cfg: DegradationConfig, log: RunDir) -> DegradationResult:
    start = time.perf_counter()
    bundle = load_in_memory(cfg)
    steps_per_epoch = math.ceil(len(bundle.train) / cfg.batch_size)
    epochs = cfg.epochs or math.ceil(cfg.iterations / steps_per_epoch)
    log.print(
        f"degradation ({'fast' if cfg.fast else 'full'} mode): {', '.join(cfg.networks)} on "
        f"{bundle.name}, {len(bundle.train)} training / {len(bundle.val)} validation images, "
        f"{epochs} epochs of {steps_per_epoch} iterations"
        + (f" (stop at {cfg.iterations})" if cfg.iterations else "")
    )
    result = DegradationResult(log.path, cfg, {}, degradation_verdict({}), 0.0)
    for name in cfg.networks:
        result.networks[name] = _train_network(name, cfg, bundle, epochs, log.path / name)
        histories = {n: r.history for n, r in result.networks.items()}
        result.verdict = degradation_verdict(histories)
        result.elapsed_s = time.perf_counter() - start
        plot_degradation(histories, log.file("degradation.png"), _figure_title(cfg, bundle))
        write_degradation_report(result, bundle)
    log.print(recipe_line(result))
    for line in degradation_table(result).splitlines():
        log.print(line)
    log.print(result.verdict.line)
    log.print(f"Total time: {duration(result.elapsed_s)}; results in {log.path}")
    return result


def load_in_memory(cfg: DegradationConfig) -> DataBundle:
    """Load ``cfg.data`` once, split 90/10, keep the subsets asked for, as in-memory tensors
    (decoded once, then shared by every network); training images augmented if asked."""
    if not Path(cfg.data).exists() and cfg.data == str(DEFAULT_DATA):
        raise ResnetlabError(
            f"--data: the CIFAR-10 training folder is not at '{DEFAULT_DATA}'; pass --data DIR, "
            "an image folder with one sub-folder per class"
        )
    bundle = load_data(cfg.data, val_fraction=VAL_FRACTION, test_fraction=0.0, seed=cfg.seed)
    if bundle.kind != "image" or bundle.val is None:
        raise ResnetlabError(f"--data {cfg.data}: the degradation experiment needs images")
    train = _subset(bundle.train, cfg.subset, cfg.seed, cfg.workers, "--subset")
    val = _subset(bundle.val, cfg.val_subset, cfg.seed, cfg.workers, "--val-subset")
    return replace(
        bundle, train=MappedDataset(train, pad_crop_flip) if cfg.augment else train, val=val
    )


def _subset(
    dataset: Dataset, size: int | None, seed: int, workers: int, flag: str
) -> TensorDataset:
    """A seeded, class-stratified subset of ``size`` samples (all if None), as tensors."""
    x, y = dataset_tensors(dataset, workers)
    if size is None or size >= len(y):
        return TensorDataset(x, y)
    try:
        chosen, _ = train_test_split(
            np.arange(len(y)), train_size=size, stratify=y.numpy(), random_state=seed
        )
    except ValueError as exc:
        raise ResnetlabError(f"{flag} {size}: no stratified subset of {len(y)} ({exc})") from None
    index = torch.from_numpy(np.sort(chosen))
    return TensorDataset(x[index], y[index])


def _train_network(
    name: str, cfg: DegradationConfig, bundle: DataBundle, epochs: int, path: Path
) -> NetworkResult:
    """Train ``name`` with the engine in its own run folder, seeded like every other network;
    weight decay on all parameters, as in the paper, and its step schedule."""
    train_cfg = TrainConfig(
        model=name, data=cfg.data, epochs=epochs, batch_size=cfg.batch_size,
        optimizer="sgd", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        decay_norm_and_bias=True, schedule="step", precision=cfg.precision, device=cfg.device,
        seed=cfg.seed, val_fraction=VAL_FRACTION, test_fraction=0.0, workers=cfg.workers,
        out=str(path), limit_steps=cfg.iterations, quiet=cfg.quiet,
    )  # fmt: skip
    trained = train_on_bundle(train_cfg, bundle, f"{name} on {bundle.name}")
    return NetworkResult(name, network_params(train_cfg, bundle), trained.history, path)


def _figure_title(cfg: DegradationConfig, bundle: DataBundle) -> str:
    augment = "augmented" if cfg.augment else "no augmentation"
    return f"{bundle.name}: {len(bundle.train)} training images ({augment})"
