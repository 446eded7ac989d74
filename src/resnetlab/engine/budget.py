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
# Kept back for what is not measured (start-up, checkpoints, figures, a step's noise): seconds,
# and a share of the time left. The length is re-fitted after every epoch from the run's own
# pace (a virtual machine's steps have varied by 20% within a minute).
MARGIN_S, MARGIN_SHARE = 5.0, 0.03


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
    rng = capture_rng(trainer.precision.device)
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
    restore_rng(rng, trainer.precision.device)
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


@dataclass(frozen=True)
class Pace:
    """Seconds that the rest of a run costs: each training step, each epoch's work besides its
    steps (validation, BatchNorm recomputation, checkpoints), the final (TTA) evaluation, and
    what is paid once at the start (compiling)."""

    step_s: float
    epoch_s: float
    final_s: float
    once_s: float = 0.0


def pace_of(trainer: Trainer, speed: Speed) -> Pace:
    """The pace that ``speed``'s measurements predict for ``trainer``'s run."""
    val_batches = 0 if trainer.val_loader is None else len(trainer.val_loader)
    # BatchNorm recomputation: forward passes of training batches, half an evaluation batch each
    bn_batches = 0 if trainer.average is None else BN_SAMPLES / (2 * trainer.order.batch_size)
    return Pace(
        step_s=speed.step_s,
        epoch_s=(val_batches + bn_batches) * speed.eval_batch_s,
        final_s=val_batches * speed.eval_batch_s * (2 if trainer.cfg.tta == "flip" else 1),
        once_s=max(0.0, speed.first_step_s - speed.step_s),
    )


def fit_length(trainer: Trainer, pace: Pace, seconds: float, most: int | None) -> Length:
    """The most steps of ``trainer``'s run (at most ``most`` in all) that end within
    ``seconds`` from now, an epoch's end, at ``pace``, with a margin (at least one more step):
    whole epochs, the last one cut short by ``limit_steps`` where the budget ends within it."""
    per_epoch = trainer.steps_per_epoch
    left = seconds * (1 - MARGIN_SHARE) - MARGIN_S - pace.once_s - pace.final_s
    epochs = max(1, math.ceil(left / (per_epoch * pace.step_s + pace.epoch_s)))
    steps = trainer.steps_done + max(1, math.floor((left - epochs * pace.epoch_s) / pace.step_s))
    if most is not None:
        steps = min(steps, most)
    epochs = max(1, math.ceil(steps / per_epoch))
    whole = steps == epochs * per_epoch and trainer.cfg.limit_steps is None
    return Length(epochs, None if whole else steps)


class Budget:
    """A run's wall-clock budget after its length was first fitted: at the end of each epoch
    the rest of the run is fitted again at the pace measured so far (a step: the slower of the
    run's mean and the last epoch's; every process's slowest), and shortened where it would
    overrun. It never grows: the first fit keeps the margin."""

    def __init__(self, deadline: float, pace: Pace) -> None:
        self.deadline, self.pace = deadline, pace  # deadline: a time.perf_counter()
        self.train_s, self.steps, self.other_s, self.epochs = 0.0, 0, 0.0, 0

    def after_epoch(self, trainer: Trainer, tally: EpochTally, other_s: float) -> None:
        """Count the epoch's ``tally`` (its steps' seconds) and ``other_s`` seconds of
        validation and checkpoints, then shorten the run if it would end after the deadline."""
        self.train_s, self.steps = self.train_s + tally.seconds, self.steps + tally.steps
        self.other_s, self.epochs = self.other_s + other_s, self.epochs + 1
        planned = trainer.total_steps(trainer.cfg.epochs, first_step=0)
        if trainer.steps_done >= planned:
            return
        late = time.perf_counter() - self.deadline  # every process fits to the earliest end
        mean_s, last_s = self.train_s / self.steps, tally.seconds / tally.steps
        observed = [max(mean_s, last_s), self.other_s / self.epochs, late]  # slowing down?
        step_s, epoch_s, late = trainer.world.max(torch.tensor(observed).double()).tolist()
        pace = Pace(step_s, epoch_s, self.pace.final_s)
        length = fit_length(trainer, pace, -late, planned)
        steps = length.limit_steps or length.epochs * trainer.steps_per_epoch
        if steps < planned:  # capped by steps: the phase's epoch loop was given the old length
            trainer.set_length(length.epochs, steps)
            trainer.run.write_config(trainer.cfg.to_dict())
            trainer.run.print(
                f"--time-budget: {step_s:.3g} s a step so far -> {steps} steps instead of "
                f"{planned} ({_flags(length)})"
            )


def fit_to_budget(trainer: Trainer, seconds: float) -> Length:
    """Measure ``trainer``'s speed and set its run to the length that fits ``seconds`` (the
    budget left), to be re-fitted after each epoch; print what was chosen."""
    deadline = time.perf_counter() + seconds
    speed = measure_speed(trainer)
    pace = pace_of(trainer, speed)
    late = trainer.world.max(torch.tensor([time.perf_counter() - deadline]).double()).item()
    length = fit_length(trainer, pace, -late, trainer.cfg.limit_steps)
    trainer.set_length(length.epochs, length.limit_steps)
    trainer.budget = Budget(deadline, pace)
    trainer.run.print(
        f"--time-budget: {speed.step_s:.3g} s a step, "
        f"{speed.eval_batch_s:.3g} s an evaluation batch, {speed.first_step_s:.3g} s the first "
        f"step -> {_flags(length)} ({seconds:.0f} s of the budget left)"
    )
    return length


def _flags(length: Length) -> str:
    """``length`` as the flags that ask for it."""
    steps = "" if length.limit_steps is None else f", --limit-steps {length.limit_steps}"
    return f"--epochs {length.epochs}{steps}"
