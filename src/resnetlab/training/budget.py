"""``--time-budget``: the number of epochs (or, below one epoch, of steps) that fits a run in a
wall-clock budget, from the measured speed of its first steps and of evaluation."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from resnetlab.checkpoints.state import capture_rng, restore_rng
from resnetlab.training.step import EpochTally, Normalizer, Reduce, TrainStep

TIMED_STEPS = 5  # steps timed after the first one, which warms up (and compiles); the median
# Kept back for what is not measured (start-up, checkpoints, figures, a step's noise): seconds,
# and a share of the time left. The length is re-fitted after every epoch from the run's own
# pace (a virtual machine's steps have varied by 20% within a minute).
MARGIN_S, MARGIN_SHARE = 5.0, 0.03

Batches = Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


def measure_speed(
    step: TrainStep,
    tally: EpochTally,
    batches: Batches,
    eval_batches: Batches | None,
    model: nn.Module,
    normalize: Normalizer,
    slowest: Reduce,
) -> Speed:
    """Time ``step`` (a probe: a copy of the run's model and optimiser) on the first batches
    of ``batches``, counted in ``tally``, then ``model``'s forward pass on the first evaluation
    batch; every random stream is left as it was. ``slowest``: under ``torchrun``, a maximum
    over the processes."""
    device = step.precision.device
    rng = capture_rng(device)
    times = []
    for x, y, indices in itertools.islice(batches, 1 + TIMED_STEPS):
        times.append(_timed(partial(step, x, y, indices, 1, tally), device))
    eval_s = 0.0
    if eval_batches is not None:
        x = next(iter(eval_batches))[0]
        model.eval()
        with torch.inference_mode():
            batch = step.precision.batch(normalize(x.to(device)))
            eval_s = _timed(lambda: model(batch), device)
    restore_rng(rng, device)
    later = sorted(times[1:]) or times
    measured = torch.tensor([times[0], later[len(later) // 2], eval_s], dtype=torch.double)
    return Speed(*slowest(measured).tolist())


def _timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``work`` takes on ``device``."""
    start = time.perf_counter()
    work()
    if device.type == "cuda":
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


def pace_of(speed: Speed, val_batches: int, bn_batches: float, tta: bool) -> Pace:
    """The pace that ``speed``'s measurements predict for a run that validates
    ``val_batches`` evaluation batches an epoch, recomputes BatchNorm statistics on as many
    forward passes as ``bn_batches`` evaluation batches (weight averaging), and tests with
    flip ``tta`` (two passes) or without."""
    return Pace(
        step_s=speed.step_s,
        epoch_s=(val_batches + bn_batches) * speed.eval_batch_s,
        final_s=val_batches * speed.eval_batch_s * (2 if tta else 1),
        once_s=max(0.0, speed.first_step_s - speed.step_s),
    )


def fit_length(
    pace: Pace,
    seconds: float,
    per_epoch: int,
    steps_done: int = 0,
    most: int | None = None,
    limit_steps: int | None = None,
) -> Length:
    """The most steps of a run of ``per_epoch`` steps an epoch, ``steps_done`` of them done (at
    most ``most`` in all), that end within ``seconds`` from now, an epoch's end, at ``pace``,
    with a margin (at least one more step): whole epochs, the last one cut short by
    ``limit_steps`` where the budget ends within it (or where the run's ``limit_steps`` was
    given)."""
    left = seconds * (1 - MARGIN_SHARE) - MARGIN_S - pace.once_s - pace.final_s
    epochs = max(1, math.ceil(left / (per_epoch * pace.step_s + pace.epoch_s)))
    steps = steps_done + max(1, math.floor((left - epochs * pace.epoch_s) / pace.step_s))
    if most is not None:
        steps = min(steps, most)
    epochs = max(1, math.ceil(steps / per_epoch))
    whole = steps == epochs * per_epoch and limit_steps is None
    return Length(epochs, None if whole else steps)


class Budget:
    """A run's wall-clock budget, ending at ``deadline`` (a ``time.perf_counter()``): the
    run's first length, fitted at ``pace`` (``first_length``), then, at the end of each epoch,
    the rest of the run fitted again at the pace measured so far (a step: the slower of the
    run's mean and the last epoch's; every process's slowest, by ``slowest``) and shortened
    where it would overrun (``after_epoch``). It never grows: the first fit keeps the margin.
    ``report`` prints what was chosen."""

    def __init__(
        self,
        deadline: float,
        pace: Pace,
        per_epoch: int,
        slowest: Reduce,
        report: Callable[[str], None],
    ) -> None:
        self.deadline, self.pace, self.per_epoch = deadline, pace, per_epoch
        self.slowest, self.report = slowest, report
        self.train_s, self.steps, self.other_s, self.epochs = 0.0, 0, 0.0, 0

    def first_length(self, speed: Speed, seconds: float, limit_steps: int | None) -> Length:
        """The length that ends by the deadline (``seconds`` of the budget were left when
        ``speed`` was measured), at most ``limit_steps``."""
        late = self.slowest(torch.tensor([time.perf_counter() - self.deadline]).double()).item()
        length = fit_length(self.pace, -late, self.per_epoch, 0, limit_steps, limit_steps)
        self.report(
            f"--time-budget: {speed.step_s:.3g} s a step, "
            f"{speed.eval_batch_s:.3g} s an evaluation batch, {speed.first_step_s:.3g} s the first "
            f"step -> {_flags(length)} ({seconds:.0f} s of the budget left)"
        )
        return length

    def after_epoch(
        self,
        tally: EpochTally,
        other_s: float,
        planned: int,
        steps_done: int,
        limit_steps: int | None,
    ) -> Length | None:
        """Count the epoch's ``tally`` (its steps' seconds) and ``other_s`` seconds of
        validation and checkpoints; the shorter length (of ``planned`` steps in all, with
        ``limit_steps`` now) if the run would end after the deadline, else None."""
        self.train_s, self.steps = self.train_s + tally.seconds, self.steps + tally.steps
        self.other_s, self.epochs = self.other_s + other_s, self.epochs + 1
        if steps_done >= planned:
            return None
        late = time.perf_counter() - self.deadline  # every process fits to the earliest end
        mean_s, last_s = self.train_s / self.steps, tally.seconds / tally.steps
        observed = [max(mean_s, last_s), self.other_s / self.epochs, late]  # slowing down?
        step_s, epoch_s, late = self.slowest(torch.tensor(observed).double()).tolist()
        pace = Pace(step_s, epoch_s, self.pace.final_s)
        length = fit_length(pace, -late, self.per_epoch, steps_done, planned, limit_steps)
        steps = length.limit_steps or length.epochs * self.per_epoch
        if steps >= planned:  # capped by steps: the phase's epoch loop was given the old length
            return None
        self.report(
            f"--time-budget: {step_s:.3g} s a step so far -> {steps} steps instead of "
            f"{planned} ({_flags(length)})"
        )
        return Length(length.epochs, steps)


def _flags(length: Length) -> str:
    """``length`` as the flags that ask for it."""
    steps = "" if length.limit_steps is None else f", --limit-steps {length.limit_steps}"
    return f"--epochs {length.epochs}{steps}"
