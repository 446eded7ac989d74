"""A training run's state: loaders, precision, epochs in phases, checkpoints and the final test."""

from __future__ import annotations

import itertools
import signal
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from resnetlab.data.augment import BatchAugment
from resnetlab.data.bundle import DataBundle
from resnetlab.data.streaming import mixup_cutmix
from resnetlab.engine.averaging import BN_SAMPLES, WeightAverage
from resnetlab.engine.batches import (
    BatchOrder,
    TensorBatches,
    is_in_memory,
    keep_on_device,
    make_loader,
)
from resnetlab.engine.board import open_board, write_epoch
from resnetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.engine.compiled import should_compile
from resnetlab.engine.config import TrainConfig
from resnetlab.engine.distributed import launched_world
from resnetlab.engine.loop import (
    EpochTally,
    Normalizer,
    StepOptions,
    TrainStep,
    make_loss,
    predict,
    train_one_epoch,
)
from resnetlab.engine.memory import keep_freed_memory
from resnetlab.engine.metrics import classification_report, regression_report, topk_accuracy
from resnetlab.engine.optim import build_scheduler
from resnetlab.engine.plots import plot_confusion, plot_curves, plot_time_to_accuracy
from resnetlab.engine.precision import resolve_device, resolve_precision
from resnetlab.engine.rundir import TIMINGS, RunDir, progress_enabled
from resnetlab.engine.state import STATE_FILE, capture_rng, restore_rng, save_state
from resnetlab.engine.stops import StopRequests
from resnetlab.errors import ResnetlabError, RunStopped

if TYPE_CHECKING:
    from resnetlab.engine.budget import Budget

_CHECK_EVERY = 50  # steps between reads of the on-device non-finite-loss count (--on-nan stop)
# Under torchrun, steps between agreements on stop requests and timed saves (and each epoch's
# last step): a signal stops every process within this many steps, with no collective per step.
AGREE_EVERY = 10
MIN_TIMED_S = 1.0  # shorter epochs print no samples/s: a few steps are too few to time


@dataclass
class _Phase:
    """The phase being trained: its number, first step and length in steps, optimiser, lr
    schedule and step."""

    index: int
    first_step: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The article's ``Epoch [e/N], Loss: x.xxxx`` line, then validation (accuracy, or RMSE
    and R² for regression), lr, speed (for epochs long enough to time) and time."""
    parts = [f"Epoch [{record['epoch']}/{epochs}], Loss: {record['train_loss']:.4f}"]
    if record.get("val_rmse") is not None:
        parts.append(f"Val loss: {record['val_loss']:.4f}, RMSE: {record['val_rmse']:.4g}")
        if record["val_r2"] is not None:
            parts.append(f"R²: {record['val_r2']:.3f}")
    elif record["val_acc"] is not None:
        parts.append(f"Val acc: {record['val_acc']:.2f}%")
    parts.append(f"LR: {record['lr']:.4g}")
    if record.get("train_s", MIN_TIMED_S) >= MIN_TIMED_S:
        parts.append(f"{record['samples_per_s']:.0f} samples/s")
    parts.append(str(timedelta(seconds=round(record["elapsed_s"]))))
    return ", ".join(parts)


def batch_augment(cfg: TrainConfig, bundle: DataBundle) -> BatchAugment | None:
    """Batched crop/flip/cutout for images or clips held in memory, or None (nothing asked, or
    the images stream through per-image transforms instead)."""
    wanted = cfg.crop_padding or cfg.flip or cfg.flip_alternate or cfg.cutout
    if not wanted or bundle.kind not in ("image", "video") or not is_in_memory(bundle.train):
        return None
    return BatchAugment(
        bundle.mean, bundle.std, crop_padding=cfg.crop_padding, padding_mode=cfg.padding_mode,
        flip=cfg.flip, flip_alternate=cfg.flip_alternate, cutout=cfg.cutout, seed=cfg.seed,
    )  # fmt: skip


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``tensors`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


class Trainer:
    """Trains one model on one DataBundle, epoch by epoch, possibly in several phases
    (each with its own optimiser), keeping ``best``/``last`` checkpoints and the training
    state (``engine.state``) in the run folder.

    Given a ``resume`` state, it continues that run exactly where the state was saved: the
    phase, the epoch, the step within it, every random stream and every running sum.
    """

    def __init__(
        self,
        model: nn.Module,
        bundle: DataBundle,
        cfg: TrainConfig,
        run: RunDir,
        header: dict[str, Any],
        *,
        requested: dict[str, Any] | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.bundle, self.cfg, self.run, self.header = bundle, cfg, run, header
        self.requested = requested if requested is not None else cfg.to_dict()
        self.world = launched_world()
        device = resolve_device(cfg.device)
        with self.world.main_first():  # rank 0 measures a CPU's bf16 speed for the cache first
            self.precision = resolve_precision(cfg.precision, device, bundle.kind)
        self.bundle = bundle = keep_on_device(bundle, self.precision.device)
        if self.precision.device.type == "cpu":
            keep_freed_memory()  # about 10% faster steps (engine/memory.py)
        if cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.precision.prepare(model)
        self.average = None if cfg.ema is None else WeightAverage(self.model, cfg.ema)
        self.normalize = Normalizer(bundle.mean, bundle.std, bundle.input_shape)
        self.transform = batch_augment(cfg, bundle) or self.normalize
        self.step_options = StepOptions(
            mixup_cutmix(bundle.num_classes, cfg.mixup, cfg.cutmix),
            cfg.clip_grad,
            skip_nonfinite=cfg.on_nan == "skip",
            any_process=self.world.max if self.world.distributed else None,
        )
        self.regression = bundle.task == "regression"
        self.loss_fn = make_loss(cfg.loss, cfg.label_smoothing, self._class_weights())
        self.order = BatchOrder(
            len(bundle.train), self._train_batch_size(), shuffle=True, seed=cfg.seed,
            drop_last=True, rank=self.world.rank, world=self.world.size,
        )  # fmt: skip
        self.train_loader = make_loader(
            bundle.train, self.order, workers=cfg.workers, device=self.precision.device
        )
        self.val_loader = None if bundle.val is None else self._eval_loader(bundle.val)
        self.scaler = torch.amp.GradScaler(
            self.precision.device.type, enabled=self.precision.name == "fp16"
        )
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_epoch, self.steps_done = float("-inf"), 0, 0
        self.bad_epochs = 0  # epochs since the best one (early stopping)
        self.skipped_steps, self.elapsed_before = 0, 0.0
        self.stops = StopRequests()
        steps = self.total_steps(cfg.epochs, 0)
        self.compiled = should_compile(cfg.compile, bundle.kind, self.precision.device, steps)
        self.phase: _Phase | None = None
        self.budget: Budget | None = None  # --time-budget, once fit_to_budget has fitted it
        self.fixed_norms: frozenset[str] = frozenset()  # BatchNorm layers the phase keeps as is
        self.pending = resume
        if resume is not None:
            self._restore_progress(resume)
        self.start = time.perf_counter()
        self.last_save = self.start
        wants_board = cfg.tensorboard and self.world.is_main
        self.board = open_board(run, len(self.history) + 1) if wants_board else None

    def set_length(self, epochs: int, limit_steps: int | None) -> None:
        """Make the run (one phase) ``epochs`` long, capped at ``limit_steps`` (what
        ``--time-budget`` chose), its warmup scaled to keep its share of the run: in the config,
        the request that a resume or a replay repeats, and the checkpoints' recipe; the budget
        itself is then spent. During training, the lr schedule goes on over the new length."""
        before = self.total_steps(self.cfg.epochs, first_step=0)
        self.cfg = replace(self.cfg, epochs=epochs, limit_steps=limit_steps)
        after = self.total_steps(epochs, first_step=0)
        warmup = round(self.cfg.warmup_epochs * after / before, 4)
        changes = {
            "epochs": epochs, "limit_steps": limit_steps, "warmup_epochs": warmup,
            "time_budget": None,
        }  # fmt: skip
        self.cfg = replace(self.cfg, **changes)
        self.requested = {**self.requested, **changes}
        self.header = {**self.header, "recipe": {**self.header["recipe"], **changes}}
        if self.phase is not None:
            self._reschedule(after)

    def _reschedule(self, total_steps: int) -> None:
        """The current phase's lr schedule made ``total_steps`` long, at the step the phase has
        reached: the optimiser's lr set for its next step."""
        assert self.phase is not None
        done = self.steps_done - self.phase.first_step
        scheduler = build_scheduler(
            self.phase.optimizer, self.cfg, total_steps, self.steps_per_epoch, last_step=done - 1
        )
        self.phase = replace(self.phase, total_steps=total_steps, scheduler=scheduler)

    def _train_batch_size(self) -> int:
        """``--batch-size``, or the whole training split where that is smaller (with a warning):
        training drops an incomplete last batch, and would otherwise have no step at all."""
        samples, processes = len(self.bundle.train), self.world.size
        self.world.check_global_batch(self.cfg.batch_size)
        if self.cfg.batch_size <= samples:
            return self.cfg.batch_size
        batch = samples - samples % processes
        warnings.warn(
            f"--batch-size {self.cfg.batch_size} is larger than the training split of "
            f"--data {self.cfg.data} ({samples} samples); training with batches of {batch}",
            stacklevel=2,
        )
        return batch

    def _class_weights(self) -> torch.Tensor | None:
        """``--class-weight balanced``: ``n / (classes * n_c)`` for class ``c`` of the
        training rows (scikit-learn's rule), or None."""
        if self.cfg.class_weight is None:
            return None
        counts = torch.tensor(self.bundle.class_counts, dtype=torch.float32)
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        return weights.to(self.precision.device)

    @property
    def stopped_early(self) -> bool:
        """Whether ``--patience`` epochs have passed without a better best epoch."""
        return self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one pass over the training split."""
        return len(self.order)

    def total_steps(self, epochs: int, first_step: int | None = None) -> int:
        """Steps in ``epochs`` epochs from step ``first_step`` (default: now), capped by
        ``--limit-steps`` over the whole run."""
        steps = epochs * self.steps_per_epoch
        if self.cfg.limit_steps is not None:
            start = self.steps_done if first_step is None else first_step
            steps = min(steps, self.cfg.limit_steps - start)
        return max(steps, 1)

    @property
    def out_of_steps(self) -> bool:
        """Whether ``--limit-steps`` has been reached."""
        return self.cfg.limit_steps is not None and self.steps_done >= self.cfg.limit_steps

    @property
    def resumed_phase(self) -> int:
        """The phase a resumed run continues in (0 for a new run)."""
        return 0 if self.pending is None else self.pending["phase"]

    def fit(
        self, optimizer: torch.optim.Optimizer, phase: int, epochs: int, end_epoch: int
    ) -> None:
        """Train phase number ``phase`` (``epochs`` long, ending after epoch ``end_epoch``) with
        ``optimizer`` on its lr schedule; log, validate, checkpoint and save the state."""
        resuming = self.pending is not None and self.pending["phase"] == phase
        first_step = self.pending["phase_start_step"] if resuming else self.steps_done
        total_steps = self.total_steps(epochs, first_step)
        scheduler = build_scheduler(optimizer, self.cfg, total_steps, self.steps_per_epoch)
        step = TrainStep(
            self.world.wrap(self.model),  # after the phase set requires_grad
            optimizer, self.loss_fn, self.precision, self.transform,
            scaler=self.scaler, options=self.step_options, compile=self.compiled,
            report=self.run.print,
        )  # fmt: skip
        self.phase = _Phase(phase, first_step, total_steps, optimizer, scheduler, step)
        tally = self._restore_training(self.pending) if resuming else None
        with self.stops:
            # an epoch that a resumed state left unfinished ends even at --limit-steps
            while len(self.history) < end_epoch and (
                tally is not None or not (self.out_of_steps or self.stopped_early)
            ):
                tally = self._train_epoch(
                    tally or EpochTally(self.precision.device, self.regression)
                )
                trained = time.perf_counter()
                self._end_epoch(self._epoch_record(tally))
                if self.budget is not None:  # before the state, which holds the length
                    self.budget.after_epoch(self, tally, time.perf_counter() - trained)
                tally = None
                self.save_state(None)
                # a signal during validation may have reached one process alone
                self._stop_if_asked(self._agreed()[0])

    def _train_epoch(self, tally: EpochTally) -> EpochTally:
        """The rest of the current epoch, from step ``tally.steps`` of it."""
        epoch = len(self.history) + 1
        self.order.set_epoch(epoch, tally.steps)
        budget = None if self.cfg.limit_steps is None else self.cfg.limit_steps - self.steps_done
        show_bar = progress_enabled(self.cfg.quiet) and self.world.is_main
        assert self.phase is not None
        return train_one_epoch(
            self.phase.step, self.train_loader, self.phase.scheduler,
            epoch=epoch, tally=tally, max_steps=budget,
            after_step=partial(self._after_step, tally),
            progress=f"epoch {epoch}/{self.cfg.epochs}" if show_bar else None,
        )  # fmt: skip

    def _after_step(self, tally: EpochTally) -> None:
        """Count the step and update the weight average; stop on a non-finite loss, save the
        state when it is due, and stop cleanly (state saved) when a signal asked for it."""
        self.steps_done += 1
        if self.average is not None:
            self.average.update(self.model)
        stop, late = None, False
        ends_epoch = tally.steps == self.steps_per_epoch or self.out_of_steps
        if not self.world.distributed or ends_epoch or self.steps_done % AGREE_EVERY == 0:
            minutes = self.cfg.save_every_minutes
            late = minutes is not None and time.perf_counter() - self.last_save >= 60 * minutes
            stop, late = self._agreed(late)
        due = late or (self.cfg.save_every and self.steps_done % self.cfg.save_every == 0)
        if stop is not None or due:
            self.save_state(tally)
        elif tally.steps % _CHECK_EVERY == 0 or self.step_options.skip_nonfinite:
            self._check_finite(tally)  # --on-nan skip counts on the host: no sync, every step
        self._stop_if_asked(stop)

    def _agreed(self, late: bool = False) -> tuple[signal.Signals | None, bool]:
        """The stop request (a signal) and ``late``: this process's own in one process; under
        ``torchrun``, any process's, so that all stop, and save, at the same step."""
        stop = self.stops.signal
        if self.world.distributed:
            agreed = self.world.max(torch.tensor([stop or 0, int(late)]))
            stop = signal.Signals(int(agreed[0])) if agreed[0] else None
            late = bool(agreed[1])
        return stop, late

    def _stop_if_asked(self, stop: signal.Signals | None) -> None:
        """After the state is saved: end the run if a signal asked for it (``RunStopped``)."""
        if stop is not None:
            raise RunStopped(
                f"stopped by {stop.name} after epoch {len(self.history)}, step "
                f"{self.steps_done}, state saved; resume with: resnetlab {self.cfg.command} "
                f"--resume {self.run.path}",
                128 + stop.value,
            )

    def _check_finite(self, tally: EpochTally, *, weights: bool = False) -> None:
        """Stop the run at a non-finite loss (``--on-nan stop``), or after ``--max-nan-steps``
        skipped steps (``--on-nan skip``); with ``weights`` (before anything is saved), also
        when the weights or BatchNorm statistics are no longer finite, which an update can do
        even when its loss was finite. The last good state stays on disk."""
        epoch = len(self.history) + 1
        advice = "--clip-grad or a lower --lr may help"
        if self.cfg.on_nan == "skip":
            skipped = self.skipped_steps + tally.skipped
            if skipped > self.cfg.max_nan_steps:
                raise ResnetlabError(
                    f"{skipped} steps had a non-finite loss by epoch {epoch}, step "
                    f"{self.steps_done}, more than --max-nan-steps {self.cfg.max_nan_steps}; "
                    f"{self._last_good_state()} ({advice})"
                )
        elif int(self.world.sum(tally.nonfinite.clone())):  # every process stops together
            step = self.steps_done - tally.steps + int(tally.first_nonfinite) + 1
            raise ResnetlabError(
                f"non-finite loss at epoch {epoch}, step {step} "
                f"(lr {float(tally.first_nonfinite_lr):.4g}); {self._last_good_state()} "
                f"({advice}; --on-nan skip skips such steps)"
            )
        if weights and not _all_finite(self.model.state_dict().values()):
            raise ResnetlabError(
                f"non-finite weights after epoch {epoch}, step {self.steps_done} "
                f"(lr {tally.lr:.4g}); {self._last_good_state()} ({advice})"
            )

    def _last_good_state(self) -> str:
        """Where a stopped run's last good state is (a state is only saved when good)."""
        if self.run.file(STATE_FILE).is_file():
            return f"the last good state is in {self.run.path}"
        return "no training state was saved before it"

    def _epoch_record(self, tally: EpochTally) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl: training sums, validation, lr, speed."""
        self._check_finite(tally, weights=True)
        assert self.phase is not None
        self.skipped_steps += tally.skipped
        record = {
            "epoch": len(self.history) + 1,
            "step": self.steps_done,
            **tally.summary(self.world.sum),
            "train_s": tally.seconds,
            "lr": tally.lr,  # the epoch's last step's, not the next one's
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.start,
            "val_loss": None,
            "val_acc": None,
        }
        if self.cfg.clip_grad is not None:
            record.update(tally.gradient_summary())
        self.world.average_batchnorm(self.model)  # before validation and the checkpoints
        if self.average is not None:
            inputs = self._batchnorm_inputs()
            self.average.recompute_batchnorm(inputs, self.precision, keep=self.fixed_norms)
            self.world.average_batchnorm(self.average.module)
        if self.val_loader is not None:
            outputs, targets, record["val_loss"] = self._predict(self.val_loader, self.evaluated)
            if self.regression:
                report = regression_report(outputs, targets, self.bundle.target_scale)
                record.update({f"val_{key}": report[key] for key in ("rmse", "mae", "r2")})
            else:
                record["val_acc"] = topk_accuracy(outputs, targets, 1)
        return record

    @property
    def evaluated(self) -> nn.Module:
        """The network that validation and the checkpoints see: the weight average (``--ema``)
        or the trained weights."""
        return self.model if self.average is None else self.average.module

    def _batchnorm_inputs(self) -> Iterator[torch.Tensor]:
        """Model inputs of about ``BN_SAMPLES`` training images (this process's share), the
        same in every epoch, in whole batches (a batch of one breaks BatchNorm, and a small one
        would weigh as much as a whole one): what the weight average's BatchNorm statistics
        are taken from."""
        order = BatchOrder(
            len(self.bundle.train), self.order.batch_size, shuffle=True, seed=self.cfg.seed,
            drop_last=True, rank=self.world.rank, world=self.world.size,
        )  # fmt: skip
        batches = max(1, min(len(order), BN_SAMPLES // order.batch_size))
        loader = make_loader(self.bundle.train, order, device=self.precision.device)
        for x, _, _ in itertools.islice(loader, batches):
            yield self.precision.batch(self.normalize(x.to(self.precision.device)))

    def _eval_loader(self, dataset: Dataset) -> TensorBatches | DataLoader:
        """Batches of ``dataset`` for evaluation: under ``torchrun``, of every ``size``-th
        sample from this process's rank on (``_predict`` gathers the parts)."""
        world = self.world
        if world.distributed:
            dataset = Subset(dataset, range(world.rank, len(dataset), world.size))
        return make_loader(
            dataset, 2 * self.cfg.batch_size, workers=self.cfg.workers, device=self.precision.device
        )

    def _predict(
        self, loader: TensorBatches | DataLoader, model: nn.Module, tta: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``model``'s class logits and targets of every sample of an ``_eval_loader``'s
        dataset, and the mean loss, gathered from every process: the metrics cover the whole
        split, not padded shards."""
        logits, targets, loss = predict(
            model, loader, self.precision, self.normalize, self.loss_fn, tta=tta,
            regression=self.regression,
        )  # fmt: skip
        if not self.world.distributed:
            return logits, targets, loss
        parts = self.world.gather((logits, targets, loss * len(targets)))
        samples = sum(len(part[1]) for part in parts)
        return (
            torch.cat([part[0] for part in parts]),
            torch.cat([part[1] for part in parts]),
            sum(part[2] for part in parts) / max(samples, 1),
        )

    def save_state(self, tally: EpochTally | None) -> None:
        """Write the training state (``engine.state``): at the end of an epoch (``tally``
        None, its losses and weights checked by ``_epoch_record``) or within one. A non-finite
        loss since the last state, or non-finite weights, are never saved."""
        if tally is not None:
            self._check_finite(tally, weights=True)
        assert self.phase is not None
        state = {
            "command": self.cfg.command,
            "config": self.requested,
            "resolved": self.cfg.to_dict(),
            "header": self.header,
            "model": self.model.state_dict(),
            "averaged": None if self.average is None else self.average.state_dict(),
            "optimizer": self.phase.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "phase": self.phase.index,
            "phase_start_step": self.phase.first_step,
            "epoch": len(self.history),
            "steps_done": self.steps_done,
            "tally": self.world.gather(None if tally is None else tally.state_dict()),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.start,
            "threads": torch.get_num_threads(),
            "world": self.world.size,
            "rng": self.world.gather(capture_rng(self.precision.device)),
            "ran_as": str(self.precision),
        }
        if self.world.is_main:
            save_state(self.run.file(STATE_FILE), state)
        self.last_save = time.perf_counter()

    def _restore_progress(self, state: dict[str, Any]) -> None:
        """Weights, history and counters of a resumed run (what the phases need to know)."""
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["averaged"])
        self.history = list(state["history"])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.steps_done, self.skipped_steps = state["steps_done"], state["skipped_steps"]
        self.elapsed_before = state["elapsed_s"]
        self.run.rewrite_metrics(self.history)

    def _restore_training(self, state: dict[str, Any]) -> EpochTally | None:
        """Optimiser, scaler and random streams of the resumed phase, and its lr schedule at the
        step reached (rebuilt: a resume with another ``--epochs`` takes its lr from the first
        step); the running sums of the epoch it stopped in (None: it stopped between epochs)."""
        assert self.phase is not None
        self.phase.optimizer.load_state_dict(state["optimizer"])
        self._reschedule(self.phase.total_steps)  # the schedule at its step, of this run's length
        ran_as = state.get("ran_as", str(self.precision))  # older states do not say
        if ran_as != str(self.precision):
            warnings.warn(
                f"--resume: the run trained as {ran_as}, this machine trains it as "
                f"{self.precision}; the run will not match an uninterrupted one",
                stacklevel=2,
            )
        if state["scaler"] or not self.scaler.is_enabled():  # fp16 after bf16 or fp32: a new
            self.scaler.load_state_dict(state["scaler"])  # scale, found again in a few steps
        rank = self.world.rank % state["world"]  # another world: not exact, as --resume warned
        restore_rng(state["rng"][rank], self.precision.device)
        self.pending = None
        if state["tally"][0] is None:
            return None
        tally = EpochTally(self.precision.device, self.regression)
        tally.load_state_dict(state["tally"][rank])
        return tally

    def _end_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.run.append_metrics(record)
        self.run.print(epoch_line(record, self.cfg.epochs))
        if self.board is not None:
            write_epoch(self.board, record)
        metrics = {key: value for key, value in record.items() if key not in TIMINGS}
        header = {**self.header, "epoch": record["epoch"], "metrics": metrics}
        state = self.evaluated.state_dict()
        score = self._score(record)
        best = score > self.best_score
        if best:
            self.best_score, self.best_epoch, self.bad_epochs = score, record["epoch"], 0
        else:
            self.bad_epochs += 1
        if self.stopped_early:
            self.run.print(
                f"Early stop: no better {'validation' if self.val_loader else 'training'} "
                f"{'accuracy' if self._by_accuracy else 'loss'} in {self.bad_epochs} epochs "
                f"(--patience {self.cfg.patience}); best epoch {self.best_epoch}"
            )
        if self.world.is_main:
            save_checkpoint(self.run.file("last.safetensors"), state, header)
            if best:
                save_checkpoint(self.run.file("best.safetensors"), state, header)

    @property
    def _by_accuracy(self) -> bool:
        """Whether the best epoch is the one of highest validation accuracy (else lowest loss)."""
        return (
            self.val_loader is not None and not self.regression and self.cfg.best_by == "accuracy"
        )

    def _score(self, record: dict[str, Any]) -> float:
        """Higher is better: validation accuracy (``--best-by accuracy``), or minus the
        validation loss (``--best-by loss``, regression), or minus the training loss."""
        if self._by_accuracy:
            return record["val_acc"]
        return -(record["val_loss"] if self.val_loader is not None else record["train_loss"])

    def _plot_time_to_accuracy(self, accuracy: float, split_name: str, title: str) -> None:
        """time_to_accuracy.png: validation accuracy per epoch against the run's wall-clock
        time, and the final evaluation's ``accuracy`` (with TTA, if asked) at its end."""
        curve = [(h["elapsed_s"] / 60, h["val_acc"]) for h in self.history]
        curve = [(minutes, accuracy) for minutes, accuracy in curve if accuracy is not None]
        if not curve:
            return
        label = f"{self.cfg.model}" + (f", --recipe {self.cfg.recipe}" if self.cfg.recipe else "")
        elapsed = self.elapsed_before + time.perf_counter() - self.start
        tta = ", flip TTA" if self.cfg.tta else ""
        plot_time_to_accuracy(
            {label: ([m for m, _ in curve], [a for _, a in curve])},
            {label: (elapsed / 60, accuracy)},
            self.run.file("time_to_accuracy.png"),
            f"{title}: {split_name} accuracy {accuracy:.1f}% (star{tta})",
        )

    def finish(self, title: str) -> dict[str, Any] | None:
        """Plot the curves, reload the best weights and test them (or validate, without a test
        split); write confusion.json/png and print the article's final accuracy line."""
        if self.board is not None:
            self.board.close()
        if self.world.is_main:
            plot_curves(self.history, self.run.file("curves.png"), title)
        bundle = self.bundle
        split_name = "test" if bundle.test is not None else "validation"
        dataset = bundle.test if bundle.test is not None else bundle.val
        if dataset is None or not self.history:
            return None
        best = load_checkpoint(self.run.file("best.safetensors"))[0] if self.world.is_main else None
        self.model.load_state_dict(self.world.broadcast(best))
        tta = self.cfg.tta == "flip"
        outputs, targets, _ = self._predict(self._eval_loader(dataset), self.model, tta=tta)
        if self.regression:
            report = {
                **regression_report(outputs, targets, self.bundle.target_scale),
                "split": split_name,
            }
            if self.world.is_main:
                self.run.write_json("test_metrics.json", report)
                self.run.print(f"Best epoch: {self.best_epoch} (best.safetensors)")
                self.run.print(
                    f"RMSE of the network on the {split_name} rows: {report['rmse']:.4g}"
                )
            return report
        report = {**classification_report(outputs, targets, bundle.classes), "split": split_name}
        if not self.world.is_main:
            return report
        self.run.write_json("confusion.json", report)
        self._plot_time_to_accuracy(report["accuracy"], split_name, title)
        plot_confusion(
            report["confusion"], bundle.classes, self.run.file("confusion.png"),
            f"{title}, {split_name} split ({report['accuracy']:.1f}%)",
        )  # fmt: skip
        self.run.print(f"Best epoch: {self.best_epoch} (best.safetensors)")
        self.run.print(
            f"Accuracy of the network on the {split_name} images: {report['accuracy']:.1f}%"
        )
        return report
