"""``--time-budget``: the number of epochs (or, below one epoch, of steps) that fits a run in a
wall-clock budget, from the measured speed of its first steps and of evaluation."""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from resnetlab.engine.averaging import BN_SAMPLES
from resnetlab.engine.loop import EpochTally, TrainStep
from resnetlab.engine.optim import build_optimizer
from resnetlab.engine.state import capture_rng, restore_rng
from resnetlab.engine.trainer import Trainer

TIMED_STEPS = 5  # steps timed after the first one, which warms up (and compiles); the median
# Kept back for what is not measured (start-up, checkpoints, figures): seconds, and a share
# that also covers a misjudged step: the median of the timed steps has been 7% below a whole
# run's (1.20 s against 1.28 s for the speed run on a quiet 2-core AMD EPYC; that run, with a
# 3% share, took 21 min of a 20-minute budget)
MARGIN_S, MARGIN_SHARE = 5.0, 0.08


@dataclass(frozen=True)
class Speed:
    """Measured seconds: the first training step (compiling included), each later step, and
    the forward pass of one evaluation batch."""

    first_step_s: float
    step_s: float
    eval_batch_s: float


@dataclass(frozen=True)
class Length:
    """How long a run may be: ``epochs``, and ``limit_steps`` when not even one fits."""

    epochs: int
    limit_steps: int | None


def measure_speed(trainer: Trainer) -> Speed:
    """Time training steps on a copy of ``trainer``'s model and optimiser (the run itself,
    and every random stream, are left as they were), then one evaluation batch; under
    ``torchrun``, the slowest process's times."""
    rng = capture_rng()
    model = copy.deepcopy(trainer.model)
    step = TrainStep(
        trainer.world.wrap(model), build_optimizer(model, trainer.cfg), trainer.loss_fn,
        trainer.precision, trainer.transform, scaler=copy.deepcopy(trainer.scaler),
        options=trainer.step_options, compile=trainer.compiled, report=lambda _: None,
    )  # fmt: skip
    tally = EpochTally(trainer.precision.device, trainer.regression)
    trainer.order.set_epoch(1)
    times = []
    for x, y, indices in itertools.islice(trainer.train_loader, 1 + TIMED_STEPS):
        times.append(_timed(partial(step, x, y, indices, 1, tally), trainer))
    eval_s = 0.0
    if trainer.val_loader is not None:
        x = next(iter(trainer.val_loader))[0]
        model.eval()
        with torch.inference_mode():
            batch = trainer.precision.batch(trainer.normalize(x.to(trainer.precision.device)))
            eval_s = _timed(lambda: model(batch), trainer)
    restore_rng(rng)
    later = sorted(times[1:]) or times
    measured = torch.tensor([times[0], later[len(later) // 2], eval_s], dtype=torch.double)
    return Speed(*trainer.world.max(measured).tolist())


def _timed(work: Callable[[], object], trainer: Trainer) -> float:
    """Seconds that ``work`` takes on the trainer's device."""
    start = time.perf_counter()
    work()
    if trainer.precision.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fit_length(trainer: Trainer, speed: Speed, seconds: float) -> Length:
    """The most steps of ``trainer``'s run that end within ``seconds`` together with each
    epoch's validation, compiling, the final (TTA) evaluation and a margin (at least one):
    whole epochs, the last one cut short by ``limit_steps`` where the budget ends within it."""
    cfg = trainer.cfg
    per_epoch = trainer.steps_per_epoch
    val_batches = 0 if trainer.val_loader is None else len(trainer.val_loader)
    # BatchNorm recomputation: forward passes of training batches, half an evaluation batch each
    bn_batches = 0 if trainer.average is None else BN_SAMPLES / (2 * trainer.order.batch_size)
    eval_epoch_s = (val_batches + bn_batches) * speed.eval_batch_s
    final_s = val_batches * speed.eval_batch_s * (2 if cfg.tta == "flip" else 1)
    compile_s = max(0.0, speed.first_step_s - speed.step_s)
    left = seconds * (1 - MARGIN_SHARE) - MARGIN_S - compile_s - final_s
    epochs = max(1, math.ceil(left / (per_epoch * speed.step_s + eval_epoch_s)))
    steps = max(1, math.floor((left - epochs * eval_epoch_s) / speed.step_s))
    if cfg.limit_steps is not None:
        steps = min(steps, cfg.limit_steps)
    epochs = max(1, math.ceil(steps / per_epoch))
    whole = steps == epochs * per_epoch and cfg.limit_steps is None
    return Length(epochs, None if whole else steps)


def fit_to_budget(trainer: Trainer, seconds: float) -> Length:
    """Measure ``trainer``'s speed and set its run to the length that fits ``seconds`` (the
    budget left); print what was chosen."""
    speed = measure_speed(trainer)
    length = fit_length(trainer, speed, seconds)
    trainer.set_length(length.epochs, length.limit_steps)
    steps = "" if length.limit_steps is None else f", --limit-steps {length.limit_steps}"
    trainer.run.print(
        f"--time-budget: {speed.step_s:.3g} s a step, "
        f"{speed.eval_batch_s:.3g} s an evaluation batch, {speed.first_step_s:.3g} s the first "
        f"step -> --epochs {length.epochs}{steps} ({seconds:.0f} s of the budget left)"
    )
    return length
