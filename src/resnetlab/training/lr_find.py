"""`resnetlab lr-find`: the learning-rate range test, for a training run or a fine-tuning one.

The lr grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimiser steps while
the loss is recorded (Smith 2017, "Cyclical learning rates for training neural networks",
sec. 3.3), smoothed by a moving average over a tenth of the sweep; the sweep stops once the
smoothed loss exceeds 4x its minimum. The suggestion is the lr where the smoothed loss falls
fastest (steepest descent of loss against log lr); the lr at the loss minimum divided by 10,
the other common rule, is printed too. Each step is the run's own training step on its own
batches, augmented and mixed as the same flags would have `train` (or `finetune`) do: the lr
is probed under the conditions the run will train in, as fastai's ``lr_find`` (which runs the
learner's training loop with its callbacks) does. The model and optimiser are a probe and are
discarded: only the curve, its plot and the suggestion remain.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

from resnetlab.checkpoints.state_dicts import WeightsFile
from resnetlab.config.finetune import FinetuneConfig
from resnetlab.config.train import MIN_SWEEP_STEPS, LrRange, TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.runtime.distributed import launched_world
from resnetlab.training.claim import open_run_dir, run_name
from resnetlab.training.optim import make_optimizer
from resnetlab.training.phases import freeze_batchnorm, phase_mode, phase_param_groups
from resnetlab.training.run import Training, check_run, prepare, single_phase, start_run
from resnetlab.training.rundir import RunDir
from resnetlab.training.step import EpochTally, TrainStep

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SMOOTHING_WINDOW = 0.1  # the loss's moving average spans about this fraction of the sweep
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class LrFindResult:
    """The loss curve, the suggested lr and where the plot went."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool
    suggestion: float  # steepest descent of the smoothed loss
    min_over_10: float  # a tenth of the lr at the smoothed loss minimum
    plot: Path


def lr_find(cfg: TrainConfig, lr_range: LrRange | None = None) -> LrFindResult:
    """Run the range test for ``cfg``: a ``FinetuneConfig`` probes the first phase of its
    strategy (the swept lr is the head's, the backbone keeps its ratio), any other config
    probes training ``cfg.model``, from ``cfg.weights`` if given, else from scratch.
    ``cfg.overwrite``: as `train`'s."""
    lr_range = lr_range or LrRange()
    if launched_world().distributed:
        raise ResnetlabError("lr-find runs in one process: start it without torchrun")
    weights = check_run(cfg)
    lr_range.validate()
    source = Path(cfg.weights).stem if cfg.weights else cfg.model
    name = run_name(f"lr-find-{source}", cfg.data)
    with open_run_dir(cfg.out, name, overwrite=cfg.overwrite) as run:
        return _lr_find(cfg, lr_range, run, weights)


def _lr_find(
    cfg: TrainConfig, lr_range: LrRange, run: RunDir, weights: WeightsFile | None
) -> LrFindResult:
    start = start_run(cfg, weights)
    cfg, bundle = start.cfg, start.bundle
    if start.report is not None:
        run.print(start.report.summary())
    if isinstance(cfg, FinetuneConfig):
        if cfg.bn == "frozen":
            freeze_batchnorm(start.model)
        phase, bn, stage_decay = cfg.phases()[0], cfg.bn, cfg.stage_decay
    else:
        phase, bn, stage_decay = single_phase(cfg)[0], "train", 1.0
    training = prepare(start, run)
    with phase_mode(training.model, phase, bn):
        groups = phase_param_groups(training.model, phase, stage_decay, cfg)
        ratios = [group["lr"] / phase.head_lr for group in groups]
        curve = _sweep(training, make_optimizer(groups, cfg), ratios, lr_range)
    result = LrFindResult(*curve, *_suggest(curve[0], curve[2]), run.file("lr_find.png"))
    _plot(result, f"lr range test: {cfg.model} on {bundle.name}")
    run.write_json("lr_find.json", {k: v for k, v in vars(result).items() if k != "plot"})
    stop = ", stopped as the loss diverged" if result.diverged else ""
    run.print(
        f"lr range test: {len(result.lrs)} steps, lr {result.lrs[0]:.2g} to "
        f"{result.lrs[-1]:.2g}{stop}"
    )
    run.print(
        f"suggested lr: {result.suggestion:.2g} (steepest descent of the smoothed loss; "
        f"loss minimum / 10: {result.min_over_10:.2g}); plot: {result.plot}"
    )
    return result


def _sweep(
    t: Training, optimizer: torch.optim.Optimizer, ratios: list[float], lr_range: LrRange
) -> tuple[list[float], list[float], list[float], bool]:
    """``(lrs, losses, smoothed losses, diverged)``: one training step (`train`'s own, compiled
    with ``--compile on``) per lr of the range (epochs repeat as needed), until the end or
    until the loss diverges."""
    t.model.train()
    step_once = TrainStep(
        t.model, optimizer, t.loss_fn, t.precision, t.transform, scaler=t.scaler,
        options=t.step_options, compile=t.cfg.compile == "on", report=t.run.print,
    )  # fmt: skip
    batches = itertools.chain.from_iterable(itertools.repeat(t.train_loader))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, beta = 0.0, 1 - 1 / max(2.0, SMOOTHING_WINDOW * lr_range.steps)
    for step, (x, y, indices) in zip(range(lr_range.steps), batches, strict=False):
        lrs.append(lr_range.lr(step))
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lrs[-1] * ratio
        tally = EpochTally(t.precision.device)
        step_once(x, y, indices, 1, tally)
        finite = not int(tally.nonfinite)
        losses.append(float(tally.loss_sum) / tally.samples if finite else math.inf)
        average = beta * average + (1 - beta) * losses[-1]  # debiased as in Adam
        smoothed.append(average / (1 - beta ** (step + 1)))
        if not math.isfinite(losses[-1]) or smoothed[-1] > DIVERGENCE * min(smoothed):
            return lrs, losses, smoothed, True
    return lrs, losses, smoothed, False


def _suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """``(lr of steepest descent, lr at the minimum / 10)`` of the finite smoothed loss,
    ignoring the first tenth of the sweep, where the average is still settling."""
    finite = [i for i, loss in enumerate(smoothed) if math.isfinite(loss)]
    if len(finite) < MIN_SWEEP_STEPS:
        raise ResnetlabError(
            f"lr-find: the loss diverged after {len(finite)} steps; lower --start-lr"
        )
    lr = np.log10(np.array(lrs)[finite])
    loss = np.array(smoothed)[finite]
    skip = len(finite) // 10
    lowest = skip + int(np.argmin(loss[skip:]))
    slope = np.gradient(loss, lr)
    steepest = skip + int(np.argmin(slope[skip : lowest + 1]))
    return float(10 ** lr[steepest]), float(10 ** lr[lowest]) / 10


def _plot(result: LrFindResult, title: str) -> None:
    """Raw and smoothed loss against lr (log scale), with the two suggestions marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax.plot(result.lrs, result.losses, color="tab:gray", alpha=0.4, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    for lr, style, label in (
        (result.suggestion, "--", "steepest descent"),
        (result.min_over_10, ":", "minimum / 10"),
    ):
        ax.axvline(lr, color="tab:red", ls=style, label=f"{label}: {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGENCE * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title)
    fig.savefig(result.plot, dpi=120)
    plt.close(fig)
