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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from resnetlab.config.train import TrainConfig
from resnetlab.data import load_data
from resnetlab.data.bundle import DataBundle, dataset_tensors
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.common import (
    describe_network,
    duration,
    experiment_dir,
    network_params,
    train_on_bundle,
)
from resnetlab.experiments.config import DEFAULT_DATA, PAPER, DegradationConfig
from resnetlab.experiments.figures import plot_degradation
from resnetlab.experiments.report import (
    DegradationResult,
    NetworkResult,
    Verdict,
    degradation_table,
    final_train_error,
    write_degradation_report,
)
from resnetlab.training.batches import BatchOrder
from resnetlab.training.rundir import RunDir


def degradation_verdict(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Verdict:
    """Compare the final training errors of the shallowest and deepest network of each kind.

    Reproduced when the deepest plain network ends with a higher training error than the
    shallowest one, and the deepest residual network with a lower one (He et al. 2015, Fig. 6);
    the line gives both margins in points of training error.
    """
    final = {name: final_train_error(h) for name, h in histories.items() if h}
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
        return gap, (
            f"{deep} {final[deep]:.1f}% {sign} {shallow} {final[shallow]:.1f}% ({gap:+.1f} points"
        )

    plain_gap, plain_text = compare("plain")
    residual_gap, residual_text = compare("residual")
    reproduced = plain_gap > 0 and residual_gap < 0
    return Verdict(
        reproduced,
        f"Degradation {'reproduced' if reproduced else 'not reproduced'}: final training error "
        f"{plain_text}, expected >), {residual_text}, expected <).",
    )


def run_degradation(cfg: DegradationConfig) -> DegradationResult:
    """Train every network of ``cfg`` on the same data; write the figure, table and JSON.

    The outputs are rewritten after each network, so a stopped run keeps what it has.
    """
    cfg = cfg.resolved()
    cfg.validate()
    for name in cfg.networks:
        describe_network(name)
    with experiment_dir(cfg.out, "degradation", cfg.overwrite) as log:
        return _run(cfg, log)


def _run(cfg: DegradationConfig, log: RunDir) -> DegradationResult:
    start = time.perf_counter()
    bundle = load_in_memory(cfg)
    batch = min(cfg.batch_size, len(bundle.train))  # as the engine: whole batches, at most all
    steps_per_epoch = len(BatchOrder(len(bundle.train), batch, drop_last=True))
    epochs = cfg.epochs or math.ceil(cfg.iterations / steps_per_epoch)
    log.print(
        f"degradation ({'fast' if cfg.fast else 'full'} mode): {', '.join(cfg.networks)} on "
        f"{bundle.name}, {len(bundle.train)} training / {len(bundle.val)} validation images, "
        f"{epochs} epochs of {steps_per_epoch} iterations"
        + (f" (stop at {cfg.iterations})" if cfg.iterations else "")
    )
    result = DegradationResult(
        log.path, cfg, recipe_line(cfg, epochs * steps_per_epoch), {}, degradation_verdict({}), 0.0
    )
    for name in cfg.networks:
        result.networks[name] = _train_network(name, cfg, bundle, epochs, log.path / name)
        histories = {n: r.history for n, r in result.networks.items()}
        result.verdict = degradation_verdict(histories)
        result.elapsed_s = time.perf_counter() - start
        plot_degradation(histories, log.file("degradation.png"), _figure_title(cfg, bundle))
        write_degradation_report(result, bundle)
    log.print(result.recipe)
    for line in degradation_table(result).splitlines():
        log.print(line)
    log.print(result.verdict.line)
    log.print(f"Total time: {duration(result.elapsed_s)}; results in {log.path}")
    return result


def load_in_memory(cfg: DegradationConfig) -> DataBundle:
    """Load ``cfg.data`` once, split 90/10, and keep the subsets asked for as in-memory tensors
    (decoded once, then shared by every network)."""
    if not Path(cfg.data).exists() and cfg.data == str(DEFAULT_DATA):
        raise ResnetlabError(
            f"--data: the CIFAR-10 training folder is not at '{DEFAULT_DATA}'; pass --data DIR, "
            "an image folder with one sub-folder per class"
        )
    bundle = load_data(
        cfg.data,
        val_fraction=PAPER["val_fraction"],
        test_fraction=PAPER["test_fraction"],
        seed=cfg.seed,
        image_size=cfg.image_size,
    )
    if bundle.kind != "image" or bundle.val is None:
        raise ResnetlabError(f"--data {cfg.data}: the degradation experiment needs images")
    train = _subset(bundle.train, cfg.subset, cfg.seed, cfg.workers, "--subset")
    val = _subset(bundle.val, cfg.val_subset, cfg.seed, cfg.workers, "--val-subset")
    return replace(bundle, train=train, val=val)


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
    """Train ``name`` with the engine and the paper's recipe in its own run folder, seeded like
    every other network."""
    recipe = {
        **PAPER,
        "batch_size": cfg.batch_size,
        "epochs": epochs,
        "limit_steps": cfg.iterations,
        "crop_padding": PAPER["crop_padding"] if cfg.augment else 0,
        "flip": cfg.augment,
        "warmup_epochs": cfg.warmup_epochs,
        "schedule": cfg.schedule,
    }
    residual = describe_network(name)[0] == "residual"
    train_cfg = TrainConfig(
        model=name, data=cfg.data, **recipe, precision=cfg.precision, device=cfg.device,
        model_options={"zero_init_residual": True} if residual and cfg.zero_init_residual else {},
        seed=cfg.seed, image_size=cfg.image_size, workers=cfg.workers, out=str(path),
        quiet=cfg.quiet, recipe="paper",
    )  # fmt: skip
    trained = train_on_bundle(train_cfg, bundle, f"{name} on {bundle.name}")
    return NetworkResult(name, network_params(train_cfg, bundle), trained.history, path)


def recipe_line(cfg: DegradationConfig, steps: int) -> str:
    """The recipe every network is trained with, in one line."""
    iterations = min(steps, cfg.iterations or steps)
    augment = "4-pixel padded crops and flips" if cfg.augment else "no augmentation"
    warmup = f" after a {cfg.warmup_epochs:g}-epoch linear warmup" if cfg.warmup_epochs else ""
    zero_init = "; ResNets' residual branches start at zero" if cfg.zero_init_residual else ""
    schedule = {
        "step": "lr / 10 at 50% and 75%",
        "onecycle": "one-cycle lr (peak after the warmup, then a cosine to zero)",
        "cosine": "lr on a cosine to zero",
        "constant": "constant lr",
    }[cfg.schedule]
    return (
        f"SGD lr {PAPER['lr']:g}, momentum {PAPER['momentum']:g}, weight decay "
        f"{PAPER['weight_decay']:g} (all parameters), batch {cfg.batch_size}; {schedule} "
        f"over {iterations} iterations{warmup}; {augment}{zero_init}"
    )


def _figure_title(cfg: DegradationConfig, bundle: DataBundle) -> str:
    side = "x".join(map(str, bundle.input_shape[1:]))
    augment = "augmented" if cfg.augment else "no augmentation"
    return f"{bundle.name}: {len(bundle.train)} training images of {side} ({augment})"
