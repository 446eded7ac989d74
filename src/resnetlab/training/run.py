"""A training run, top to bottom: check the config -> load the data -> build or load the model
-> train it in phases -> each phase an optimiser and its epochs of steps -> validate each epoch
-> write the checkpoints and the training state -> test the best weights.

`train`, `finetune`, `lr-find` and the experiments run through here; a plain run is one 'all'
phase. The helpers it calls each do one job and never call back into it: the data and model of
a config (``start.py``), what trains in a phase (``phases.py``), the step (``step.py``), the
loaders (``batches.py``), the time budget (``budget.py``), the reports (``reports.py``), and the
state file (``checkpoints/state.py``).
"""

from __future__ import annotations

import copy
import itertools
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from resnetlab.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.checkpoints.state import STATE_FILE, capture_rng, load_state, restore_rng, save_state
from resnetlab.checkpoints.state_dicts import WeightsFile, read_weights
from resnetlab.checkpoints.weights import LoadReport, model_for_header
from resnetlab.config.finetune import FinetuneConfig, Phase
from resnetlab.config.train import AUTO_MODEL, TrainConfig
from resnetlab.data import data_kind
from resnetlab.data.augment import BatchAugment
from resnetlab.data.bundle import DataBundle
from resnetlab.data.shard_stream import ShardStream
from resnetlab.data.streaming import mixup_cutmix
from resnetlab.errors import ResnetlabError, RunStopped
from resnetlab.runtime.compiled import should_compile
from resnetlab.runtime.distributed import World, launched_world
from resnetlab.runtime.memory import keep_freed_memory
from resnetlab.runtime.precision import Precision, resolve_device, resolve_precision
from resnetlab.settings import resumable
from resnetlab.training.averaging import BN_SAMPLES, WeightAverage
from resnetlab.training.baselines import compare_with_baselines
from resnetlab.training.batches import (
    BatchOrder,
    TensorBatches,
    is_in_memory,
    keep_on_device,
    make_loader,
)
from resnetlab.training.board import open_board, summary_writer, write_epoch
from resnetlab.training.budget import Budget, Length, measure_speed, pace_of
from resnetlab.training.metrics import classification_report, regression_report, topk_accuracy
from resnetlab.training.optim import build_optimizer, build_scheduler, make_optimizer
from resnetlab.training.phases import (
    describe_phase,
    phase_mode,
    phase_param_groups,
    resumes_unfrozen,
)
from resnetlab.training.reports import (
    describe_run,
    epoch_line,
    plot_confusion,
    plot_curves,
    plot_time_to_accuracy,
)
from resnetlab.training.rundir import TIMINGS, RunDir, progress_enabled
from resnetlab.training.start import (
    Config,
    build_for_data,
    check_data_kind,
    checkpoint_header,
    init_from_data,
    load_bundle,
    load_for_weights,
    resolve_for_data,
)
from resnetlab.training.step import (
    EpochTally,
    LossFn,
    Normalizer,
    StepOptions,
    TrainStep,
    Transform,
    make_loss,
    predict,
)

_CHECK_EVERY = 50  # steps between reads of the on-device non-finite-loss count (--on-nan stop)
# Under torchrun, steps between agreements on stop requests and timed saves (and each epoch's
# last step): a signal stops every process within this many steps, with no collective per step.
AGREE_EVERY = 10

Loader = TensorBatches | DataLoader


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    test_report: dict[str, Any] | None = None


# --- the config, the data, the model -------------------------------------------------------


def check_run(cfg: TrainConfig) -> WeightsFile | None:
    """Refuse a run that cannot work before its run folder is made: invalid flags, a model
    for another kind of data, batch mixing of data that is not images, --tensorboard without
    its package, or a missing or damaged weights file; return that file, read once, if the run
    starts from one."""
    cfg.validate()
    if cfg.resume and cfg.out and Path(cfg.out).resolve() != Path(cfg.resume).resolve():
        raise ResnetlabError(f"--out {cfg.out}: a resumed run writes to its own folder, --resume")
    kind = data_kind(cfg.data)
    if cfg.model != AUTO_MODEL:
        check_data_kind(cfg.model, cfg, kind)
    if (cfg.mixup or cfg.cutmix) and kind != "image":
        raise ResnetlabError(f"--mixup/--cutmix mix images; --data {cfg.data} is {kind} data")
    if cfg.tta is not None and kind != "image":
        raise ResnetlabError(f"--tta {cfg.tta} applies to images, not {kind} data")
    for flag, value in (("--class-weight", cfg.class_weight), ("--baselines", cfg.baselines)):
        if value and kind != "tabular":
            raise ResnetlabError(f"{flag} applies to tables; --data {cfg.data} is {kind} data")
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise ResnetlabError(
            "--sync-bn needs GPUs (SyncBatchNorm); on CPUs the processes average their "
            "BatchNorm statistics before each evaluation and checkpoint"
        )
    if cfg.tensorboard:
        summary_writer()
    return read_weights(cfg.weights) if cfg.weights and not cfg.resume else None


def check_on_main(cfg: Config, world: World) -> tuple[Config, WeightsFile | None]:
    """``check_run`` on rank 0 alone, whose machine has the run folder and the --weights
    file: every process gets rank 0's config (a resumed run's, which rank 0 alone read) and
    the weights, or its error."""
    return world.on_main(lambda: (cfg, check_run(cfg)))


@dataclass
class Start:
    """What a run starts from: its resolved config, the loaded data, the built model, the
    checkpoint header, and how pretrained weights were loaded (None when from scratch)."""

    cfg: TrainConfig
    bundle: DataBundle
    model: nn.Module
    header: dict[str, Any] = field(default_factory=dict)
    report: LoadReport | None = None
    requested: dict[str, Any] | None = None  # the config as given, before resolution
    resume: dict[str, Any] | None = None  # the training state that the run continues


def start_run(cfg: TrainConfig, weights: WeightsFile | None = None) -> Start:
    """Load the data and build the model (from ``weights``, read from ``cfg.weights``, if
    given), seeded by the run; or, with ``cfg.resume``, rebuild both as the saved run had them
    (``resume_run``)."""
    if cfg.resume:
        return resume_run(cfg)
    requested = cfg.to_dict()
    if weights is not None:
        cfg, bundle, model, report = load_for_weights(cfg, weights)
        header = {**checkpoint_header(cfg, bundle), "weights": report.provenance()}
        return Start(cfg, bundle, model, header, report, requested)
    bundle = load_bundle(cfg)
    cfg = resolve_for_data(cfg, bundle)
    torch.manual_seed(cfg.seed)
    model = build_for_data(cfg, bundle)
    init_from_data(model, bundle, cfg.seed)
    return Start(cfg, bundle, model, checkpoint_header(cfg, bundle), requested=requested)


def resume_config(run_dir: str | Path, command: str | None = None, **changes: Any) -> TrainConfig:
    """The config that continues the run in ``run_dir`` (a ``FinetuneConfig`` for a
    fine-tuning run), with ``changes`` (e.g. ``epochs=30``) applied: for ``train(cfg)``.
    ``command`` (``train`` or ``finetune``): refuse a run of the other command."""
    state = load_state(Path(run_dir) / STATE_FILE)
    _check_command(state, command or state["command"], run_dir)
    cls = FinetuneConfig if state["command"] == FinetuneConfig.command else TrainConfig
    # the folder as given now: a run moved or copied resumes where it is; it never overwrites
    folder = str(run_dir)
    return replace(cls(**state["config"]), resume=folder, out=folder, overwrite=False, **changes)


def _check_command(state: dict[str, Any], command: str, run_dir: str | Path) -> None:
    if state["command"] != command:
        raise ResnetlabError(
            f"--resume {run_dir}: a `{state['command']}` run; continue it with "
            f"resnetlab {state['command']} --resume {run_dir}"
        )


def resume_run(cfg: TrainConfig) -> Start:
    """Data and model for continuing the run in ``cfg.resume`` from its training state.

    The state's config must equal ``cfg`` but for the settings marked ``resumable`` (how the
    run is watched, saved and fed, not what it learns; an error lists the others), and the
    data must be the same files. More epochs, another step limit or another
    number of threads are allowed, with a warning that the run is no longer exact.
    """
    state = launched_world().on_main(partial(load_state, Path(cfg.resume) / STATE_FILE))
    _check_command(state, cfg.command, cfg.resume)
    given, saved, may_change = cfg.to_dict(), state["config"], resumable(type(cfg))
    differ = [key for key in given if key not in may_change and given[key] != saved.get(key)]
    if differ:
        listed = ", ".join(
            f"{key} (run: {saved.get(key)!r}, now: {given[key]!r})" for key in differ
        )
        raise ResnetlabError(f"--resume {cfg.resume}: the run was started with other {listed}")
    _warn_if_inexact(cfg, state)
    resolved = replace(
        type(cfg)(**state["resolved"]), **{key: given[key] for key in may_change - {"out"}}
    )
    resolved.out = cfg.resume
    header = state["header"]
    bundle = load_bundle(resolved)
    recorded = header["data"]["split"]
    if recorded and bundle.split_record and recorded["sha256"] != bundle.split_record["sha256"]:
        raise ResnetlabError(
            f"--resume {cfg.resume}: --data {cfg.data} changed since the run started "
            f"({recorded['files']} samples then, {bundle.split_record['files']} now); an exact "
            "continuation needs the same data"
        )
    if isinstance(bundle.train, ShardStream) and max(cfg.workers, 1) != max(saved["workers"], 1):
        warnings.warn(
            f"--resume: --workers {cfg.workers}, the run had {saved['workers']}; each worker "
            "reads its own shards, so the batches change and the run will not match an "
            "uninterrupted one",
            stacklevel=2,
        )
    bundle = replace(bundle, mean=header["mean"], std=header["std"])
    model = model_for_header(header)
    requested = {**saved, **{key: given[key] for key in may_change - {"resume", "out"}}}
    return Start(resolved, bundle, model, header, requested=requested, resume=state)


def _warn_if_inexact(cfg: TrainConfig, state: dict[str, Any]) -> None:
    """Warn where the continuation can no longer match an uninterrupted run bit for bit."""
    saved = state["config"]
    for key in ("epochs", "limit_steps"):
        if getattr(cfg, key) != saved[key]:
            flag = "--" + key.replace("_", "-")
            warnings.warn(
                f"--resume: {flag} changed from {saved[key]} to {getattr(cfg, key)}; the lr "
                "schedule changes, so the run will not match an uninterrupted one exactly",
                stacklevel=3,
            )
    world = launched_world()
    if state["world"] != world.size:
        if not cfg.resume_any_world:
            raise ResnetlabError(
                f"--resume {cfg.resume}: the run had {state['world']} processes, this one "
                f"{world.size}; --resume-any-world continues it anyway (no longer exactly)"
            )
        warnings.warn(
            f"--resume: {world.size} processes, the run had {state['world']}; the batches "
            "each process sees change, so the run will not match an uninterrupted one",
            stacklevel=3,
        )
    if state["threads"] != torch.get_num_threads():
        warnings.warn(
            f"--resume: {torch.get_num_threads()} threads, the run had {state['threads']}; "
            "results will not match an uninterrupted run bit for bit",
            stacklevel=3,
        )


# --- what the epochs share ---------------------------------------------------------------


@dataclass
class PhaseRun:
    """The phase being trained: its number, first step and length in steps, optimiser, lr
    schedule and step."""

    index: int
    first_step: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep


@dataclass
class Training:
    """A run as it trains: what its epochs share (``prepare``), the phase being trained, and
    how far the run has got, which the training state keeps beside the weights and the
    optimiser."""

    cfg: TrainConfig
    bundle: DataBundle
    run: RunDir
    header: dict[str, Any]  # what every checkpoint records
    requested: dict[str, Any]  # the config as given: what a resume or a replay repeats
    world: World
    precision: Precision
    model: nn.Module
    average: WeightAverage | None  # --ema: the weights that validation and checkpoints see
    normalize: Normalizer
    transform: Transform  # batch augmentation, or normalisation alone
    step_options: StepOptions
    loss_fn: LossFn
    order: BatchOrder  # the training batches' order, epoch by epoch
    train_loader: Loader
    val_loader: Loader | None
    scaler: torch.amp.GradScaler
    stops: StopRequests  # SIGINT and SIGTERM: stop after the step, the state saved
    resume: dict[str, Any] | None  # the state a resumed run continues, until its phase starts
    compiled: bool = False  # --compile, decided for the run's length
    board: Any = None  # --tensorboard's writer
    budget: Budget | None = None  # --time-budget, once its first length is set
    phase: PhaseRun | None = None
    fixed_norms: frozenset[str] = frozenset()  # BatchNorm layers the phase keeps as they are
    # how far the run has got
    history: list[dict[str, Any]] = field(default_factory=list)  # a record per epoch
    steps_done: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    skipped_steps: int = 0
    elapsed_before: float = 0.0  # seconds that the run took before this process went on
    started: float = 0.0  # when this process went on (a time.perf_counter())
    last_save: float = 0.0  # when the state was last saved

    @property
    def regression(self) -> bool:
        """Whether the run predicts a quantity (one output) rather than classes."""
        return self.bundle.task == "regression"

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
    def stopped_early(self) -> bool:
        """Whether ``--patience`` epochs have passed without a better best epoch."""
        return self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience

    @property
    def evaluated(self) -> nn.Module:
        """The network that validation and the checkpoints see: the weight average (``--ema``)
        or the trained weights."""
        return self.model if self.average is None else self.average.module

    @property
    def elapsed_s(self) -> float:
        """Seconds of the run so far, its earlier processes' included."""
        return self.elapsed_before + time.perf_counter() - self.started


def prepare(start: Start, run: RunDir) -> Training:
    """What the run's epochs share: the precision (resolved here), the model on its device,
    the weight average, transform, loss, loaders and grad scaler. A resumed run gets its
    weights, history and counters back; its optimiser and random streams wait for the phase
    it stopped in (``restore_phase``)."""
    cfg, bundle = start.cfg, start.bundle
    world = launched_world()
    with world.main_first():  # rank 0 measures a CPU's bf16 speed for the cache first
        precision = resolve_precision(cfg.precision, resolve_device(cfg.device), bundle.kind)
    bundle = keep_on_device(bundle, precision.device)
    if precision.device.type == "cpu":
        keep_freed_memory()  # about 10% faster steps (runtime/memory.py)
    device = precision.device
    model = start.model
    if cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = precision.prepare(model)
    average = None if cfg.ema is None else WeightAverage(model, cfg.ema)
    normalize = Normalizer(bundle.mean, bundle.std, bundle.input_shape)
    options = StepOptions(
        mixup_cutmix(bundle.num_classes, cfg.mixup, cfg.cutmix),
        cfg.clip_grad,
        skip_nonfinite=cfg.on_nan == "skip",
        any_process=world.max if world.distributed else None,
    )
    loss_fn = make_loss(cfg.loss, cfg.label_smoothing, _class_weights(cfg, bundle, device))
    order = BatchOrder(
        len(bundle.train), _train_batch_size(cfg, bundle, world), shuffle=True, seed=cfg.seed,
        drop_last=True, rank=world.rank, world=world.size,
    )  # fmt: skip
    t = Training(
        cfg=cfg,
        bundle=bundle,
        run=run,
        header=start.header,
        requested=cfg.to_dict() if start.requested is None else start.requested,
        world=world,
        precision=precision,
        model=model,
        average=average,
        normalize=normalize,
        transform=batch_augment(cfg, bundle) or normalize,
        step_options=options,
        loss_fn=loss_fn,
        order=order,
        train_loader=make_loader(bundle.train, order, workers=cfg.workers, device=device),
        val_loader=None if bundle.val is None else eval_loader(bundle.val, cfg, world, device),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.name == "fp16"),
        stops=StopRequests(),
        resume=start.resume,
    )
    steps = t.total_steps(cfg.epochs, first_step=0)
    t.compiled = should_compile(cfg.compile, bundle.kind, device, steps)
    if start.resume is not None:
        restore_progress(t, start.resume)
    t.started = t.last_save = time.perf_counter()
    if cfg.tensorboard and world.is_main:
        t.board = open_board(run, len(t.history) + 1)
    return t


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


def _class_weights(
    cfg: TrainConfig, bundle: DataBundle, device: torch.device
) -> torch.Tensor | None:
    """``--class-weight balanced``: ``n / (classes * n_c)`` for class ``c`` of the
    training rows (scikit-learn's rule), or None."""
    if cfg.class_weight is None:
        return None
    counts = torch.tensor(bundle.class_counts, dtype=torch.float32)
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)


def _train_batch_size(cfg: TrainConfig, bundle: DataBundle, world: World) -> int:
    """``--batch-size``, or the whole training split where that is smaller (with a warning):
    training drops an incomplete last batch, and would otherwise have no step at all."""
    samples = len(bundle.train)
    world.check_global_batch(cfg.batch_size)
    if cfg.batch_size <= samples:
        return cfg.batch_size
    batch = samples - samples % world.size
    warnings.warn(
        f"--batch-size {cfg.batch_size} is larger than the training split of "
        f"--data {cfg.data} ({samples} samples); training with batches of {batch}",
        stacklevel=3,
    )
    return batch


def eval_loader(dataset: Dataset, cfg: TrainConfig, world: World, device: torch.device) -> Loader:
    """Batches of ``dataset`` for evaluation: under ``torchrun``, of every ``size``-th
    sample from this process's rank on (``predict_split`` gathers the parts)."""
    if world.distributed:
        dataset = Subset(dataset, range(world.rank, len(dataset), world.size))
    return make_loader(dataset, 2 * cfg.batch_size, workers=cfg.workers, device=device)


# --- the run: phases, then the test ------------------------------------------------------


def single_phase(cfg: TrainConfig) -> list[Phase]:
    """A plain training run: every parameter trains at ``cfg.lr`` for ``cfg.epochs``."""
    return [Phase("all", cfg.epochs, cfg.lr, cfg.lr)]


def train_in_run(
    start: Start,
    run: RunDir,
    phases: list[Phase],
    *,
    bn_policy: str = "train",
    stage_decay: float = 1.0,
    announce_phases: bool = False,
    title: str | None = None,
    began: float | None = None,
) -> TrainResult:
    """Train ``start.model`` in ``run``: config.yaml, the run's description, each phase's
    epochs with checkpoints (``announce_phases``: a line per phase), then the final
    evaluation of the best checkpoint. ``--time-budget`` first fits the run's length to the
    budget left since ``began`` (a ``time.perf_counter()``; default: now)."""
    bundle = start.bundle
    if start.report is not None:
        run.print(start.report.summary())
    t = prepare(start, run)
    if t.cfg.time_budget is not None and start.resume is None:
        elapsed = 0.0 if began is None else time.perf_counter() - began
        fit_to_budget(t, 60 * t.cfg.time_budget - elapsed)
        phases = single_phase(t.cfg)  # a budget is `train`'s: one phase
    run.ran_as = str(t.precision)
    run.write_config(t.cfg.to_dict())
    run.print(describe_run(t.cfg, t.model, bundle, t.precision))
    run.print(f"run folder: {run.path}")
    run.print(f"data pipeline: {t.bundle.pipeline}")
    if bundle.table is not None:
        run.print(f"task: {bundle.task} ({bundle.table['task_rule']}; --task overrides)")
    if start.resume is not None:
        done, steps = start.resume["epoch"], start.resume["steps_done"]
        run.print(f"resuming after epoch {done}, step {steps}")
    train_phases(t, phases, bn_policy, stage_decay, announce=announce_phases)
    report = test_best(t, title or f"{t.cfg.model} on {bundle.name}")
    if t.cfg.baselines and report is not None and t.world.is_main:
        compare_with_baselines(bundle, report, run)
    return TrainResult(run.path, t.history, t.best_epoch, report)


def train_phases(
    t: Training,
    phases: list[Phase],
    bn_policy: str = "train",
    stage_decay: float = 1.0,
    *,
    announce: bool = True,
) -> None:
    """Train each phase with its own optimiser over the parameters it trains (``announce``:
    print a line describing it first). A resumed run skips the phases that it had finished; a
    run saved while it trained the parameters that the model froze (``resumes_unfrozen``)
    goes on training them, as it was saved."""
    last_epoch, unfreeze = 0, False
    resumed = 0 if t.resume is None else t.resume["phase"]
    for index, phase in enumerate(phases):
        last_epoch += phase.epochs
        if index < resumed:
            continue
        if not unfreeze and t.resume is not None and resumes_unfrozen(
            t.model, phase, bn_policy, stage_decay, t.cfg, t.resume["optimizer"]
        ):
            unfreeze = True
            warnings.warn(
                "--resume: this state comes from a run that trained the parameters its model "
                "freezes (as resnetlab did before they stayed frozen); to resume it exactly, "
                "they train on to the end of the run (a new run keeps them frozen)",
                stacklevel=2,
            )
        with phase_mode(t.model, phase, bn_policy, unfreeze=unfreeze) as t.fixed_norms:
            groups = phase_param_groups(t.model, phase, stage_decay, t.cfg)
            if announce:
                first_epoch = last_epoch - phase.epochs + 1
                t.run.print(describe_phase(index + 1, len(phases), first_epoch, phase, groups))
            train_phase(t, make_optimizer(groups, t.cfg), index, phase.epochs, last_epoch)


def train_phase(
    t: Training, optimizer: torch.optim.Optimizer, index: int, epochs: int, last_epoch: int
) -> None:
    """Train phase number ``index`` (``epochs`` long, ending after epoch ``last_epoch``) with
    ``optimizer`` on its lr schedule: each epoch's steps, then its validation, checkpoints and
    training state."""
    resuming = t.resume is not None and t.resume["phase"] == index
    first_step = t.resume["phase_start_step"] if resuming else t.steps_done
    total_steps = t.total_steps(epochs, first_step)
    scheduler = build_scheduler(optimizer, t.cfg, total_steps, t.steps_per_epoch)
    step = TrainStep(
        t.world.wrap(t.model),  # after the phase set requires_grad
        optimizer, t.loss_fn, t.precision, t.transform,
        scaler=t.scaler, options=t.step_options, compile=t.compiled, report=t.run.print,
    )  # fmt: skip
    t.phase = PhaseRun(index, first_step, total_steps, optimizer, scheduler, step)
    tally = restore_phase(t, t.resume) if resuming else None
    with t.stops:
        # an epoch that a resumed state left unfinished ends even at --limit-steps
        while len(t.history) < last_epoch and (
            tally is not None or not (t.out_of_steps or t.stopped_early)
        ):
            tally = tally or EpochTally(t.precision.device, t.regression)
            epoch = len(t.history) + 1
            t.order.set_epoch(epoch, tally.steps)
            left = None if t.cfg.limit_steps is None else t.cfg.limit_steps - t.steps_done
            show_bar = progress_enabled(t.cfg.quiet) and t.world.is_main
            train_one_epoch(
                step, t.train_loader, t.phase.scheduler, epoch=epoch, tally=tally, max_steps=left,
                after_step=partial(after_step, t, tally),
                progress=f"epoch {epoch}/{t.cfg.epochs}" if show_bar else None,
            )  # fmt: skip
            trained = time.perf_counter()
            end_epoch(t, validate(t, tally))
            if t.budget is not None:  # before the state, which holds the length
                planned = t.total_steps(t.cfg.epochs, first_step=0)
                other_s = time.perf_counter() - trained
                cut = t.budget.after_epoch(
                    tally, other_s, planned, t.steps_done, t.cfg.limit_steps
                )
                if cut is not None:
                    set_length(t, cut)
                    t.run.write_config(t.cfg.to_dict())
            tally = None
            save_training_state(t, None)
            # a signal during validation may have reached one process alone
            stop_if_asked(t, agreed(t)[0])


# --- an epoch and its steps ---------------------------------------------------------------


def train_one_epoch(
    step: TrainStep,
    loader: Loader,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    tally: EpochTally,
    max_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
    progress: str | None = None,
) -> EpochTally:
    """The rest of one pass over ``loader`` (or ``max_steps`` more optimiser steps) of epoch
    number ``epoch``, counted in ``tally``; ``after_step`` runs after each step (saving,
    stopping)."""
    step.model.train()
    start, steps = time.perf_counter(), 0
    bar = tqdm(loader, desc=progress, leave=False, disable=progress is None, unit="batch")
    try:
        for x, y, indices in bar:
            if max_steps is not None and steps >= max_steps:
                break
            compiling = step(x, y, indices, epoch, tally)
            scheduler.step()
            steps += 1
            tally.seconds += time.perf_counter() - start - compiling
            start = time.perf_counter()
            if after_step is not None:
                after_step()
    finally:
        bar.close()
    return tally


def after_step(t: Training, tally: EpochTally) -> None:
    """Count the step and update the weight average; stop on a non-finite loss, save the
    state when it is due, and stop cleanly (state saved) when a signal asked for it."""
    t.steps_done += 1
    if t.average is not None:
        t.average.update(t.model)
    stop, late = None, False
    ends_epoch = tally.steps == t.steps_per_epoch or t.out_of_steps
    if not t.world.distributed or ends_epoch or t.steps_done % AGREE_EVERY == 0:
        minutes = t.cfg.save_every_minutes
        late = minutes is not None and time.perf_counter() - t.last_save >= 60 * minutes
        stop, late = agreed(t, late)
    due = late or (t.cfg.save_every and t.steps_done % t.cfg.save_every == 0)
    if stop is not None or due:
        save_training_state(t, tally)
    elif tally.steps % _CHECK_EVERY == 0 or t.step_options.skip_nonfinite:
        check_finite(t, tally)  # --on-nan skip counts on the host: no sync, every step
    stop_if_asked(t, stop)


class StopRequests:
    """While active (``with``), the first SIGINT or SIGTERM only records itself in
    ``signal``: the run finishes its step (under torchrun, the step at which its processes
    next agree, ``after_step``), saves its state and stops. A second one acts at once (Ctrl-C
    raises KeyboardInterrupt, SIGTERM terminates): the state on disk is whole either way,
    since it is only ever replaced by a rename. Outside the main thread, where Python cannot
    install handlers, signals keep their usual effect."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number: int, _: FrameType | None) -> None:
        self.signal = signal.Signals(number)
        signal.signal(
            number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def agreed(t: Training, late: bool = False) -> tuple[signal.Signals | None, bool]:
    """The stop request (a signal) and ``late``: this process's own in one process; under
    ``torchrun``, any process's, so that all stop, and save, at the same step."""
    stop = t.stops.signal
    if t.world.distributed:
        agreed = t.world.max(torch.tensor([stop or 0, int(late)]))
        stop = signal.Signals(int(agreed[0])) if agreed[0] else None
        late = bool(agreed[1])
    return stop, late


def stop_if_asked(t: Training, stop: signal.Signals | None) -> None:
    """After the state is saved: end the run if a signal asked for it (``RunStopped``)."""
    if stop is not None:
        raise RunStopped(
            f"stopped by {stop.name} after epoch {len(t.history)}, step {t.steps_done}, state "
            f"saved; resume with: resnetlab {t.cfg.command} --resume {t.run.path}",
            128 + stop.value,
        )


def check_finite(t: Training, tally: EpochTally, *, weights: bool = False) -> None:
    """Stop the run at a non-finite loss (``--on-nan stop``), or after ``--max-nan-steps``
    skipped steps (``--on-nan skip``); with ``weights`` (before anything is saved), also
    when the weights or BatchNorm statistics are no longer finite, which an update can do
    even when its loss was finite. The last good state stays on disk."""
    epoch = len(t.history) + 1
    advice = "--clip-grad or a lower --lr may help"
    if t.cfg.on_nan == "skip":
        skipped = t.skipped_steps + tally.skipped
        if skipped > t.cfg.max_nan_steps:
            raise ResnetlabError(
                f"{skipped} steps had a non-finite loss by epoch {epoch}, step "
                f"{t.steps_done}, more than --max-nan-steps {t.cfg.max_nan_steps}; "
                f"{_last_good_state(t)} ({advice})"
            )
    elif int(t.world.sum(tally.nonfinite.clone())):  # every process stops together
        step = t.steps_done - tally.steps + int(tally.first_nonfinite) + 1
        raise ResnetlabError(
            f"non-finite loss at epoch {epoch}, step {step} "
            f"(lr {float(tally.first_nonfinite_lr):.4g}); {_last_good_state(t)} "
            f"({advice}; --on-nan skip skips such steps)"
        )
    if weights and not _all_finite(t.model.state_dict().values()):
        raise ResnetlabError(
            f"non-finite weights after epoch {epoch}, step {t.steps_done} "
            f"(lr {tally.lr:.4g}); {_last_good_state(t)} ({advice})"
        )


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``tensors`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _last_good_state(t: Training) -> str:
    """Where a stopped run's last good state is (a state is only saved when good)."""
    if t.run.file(STATE_FILE).is_file():
        return f"the last good state is in {t.run.path}"
    return "no training state was saved before it"


# --- validation -------------------------------------------------------------------------


def validate(t: Training, tally: EpochTally) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl: training sums, validation, lr, speed."""
    check_finite(t, tally, weights=True)
    t.skipped_steps += tally.skipped
    record = {
        "epoch": len(t.history) + 1,
        "step": t.steps_done,
        **tally.summary(t.world.sum),
        "train_s": tally.seconds,
        "lr": tally.lr,  # the epoch's last step's, not the next one's
        "elapsed_s": t.elapsed_s,
        "val_loss": None,
        "val_acc": None,
    }
    if t.cfg.clip_grad is not None:
        record.update(tally.gradient_summary())
    t.world.average_batchnorm(t.model)  # before validation and the checkpoints
    if t.average is not None:
        t.average.recompute_batchnorm(batchnorm_inputs(t), t.precision, keep=t.fixed_norms)
        t.world.average_batchnorm(t.average.module)
    if t.val_loader is not None:
        outputs, targets, record["val_loss"] = predict_split(t, t.val_loader, t.evaluated)
        if t.regression:
            report = regression_report(outputs, targets, t.bundle.target_scale)
            record.update({f"val_{key}": report[key] for key in ("rmse", "mae", "r2")})
        else:
            record["val_acc"] = topk_accuracy(outputs, targets, 1)
    return record


def batchnorm_inputs(t: Training) -> Iterator[torch.Tensor]:
    """Model inputs of about ``BN_SAMPLES`` training images (this process's share), the
    same in every epoch, in whole batches (a batch of one breaks BatchNorm, and a small one
    would weigh as much as a whole one): what the weight average's BatchNorm statistics
    are taken from."""
    order = BatchOrder(
        len(t.bundle.train), t.order.batch_size, shuffle=True, seed=t.cfg.seed,
        drop_last=True, rank=t.world.rank, world=t.world.size,
    )  # fmt: skip
    batches = max(1, min(len(order), BN_SAMPLES // order.batch_size))
    loader = make_loader(t.bundle.train, order, device=t.precision.device)
    for x, _, _ in itertools.islice(loader, batches):
        yield t.precision.batch(t.normalize(x.to(t.precision.device)))


def predict_split(
    t: Training, loader: Loader, model: nn.Module, tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``model``'s class logits and targets of every sample of an ``eval_loader``'s
    dataset, and the mean loss, gathered from every process: the metrics cover the whole
    split, not padded shards."""
    logits, targets, loss = predict(
        model, loader, t.precision, t.normalize, t.loss_fn, tta=tta, regression=t.regression
    )
    if not t.world.distributed:
        return logits, targets, loss
    parts = t.world.gather((logits, targets, loss * len(targets)))
    samples = sum(len(part[1]) for part in parts)
    return (
        torch.cat([part[0] for part in parts]),
        torch.cat([part[1] for part in parts]),
        sum(part[2] for part in parts) / max(samples, 1),
    )


# --- checkpoints and the training state -------------------------------------------------


def end_epoch(t: Training, record: dict[str, Any]) -> None:
    """Keep the epoch's ``record`` (history, metrics.jsonl, its line, TensorBoard), write
    ``last`` and, if it is the best epoch so far, ``best.safetensors``; count the epochs
    since the best one (``--patience``)."""
    t.history.append(record)
    t.run.append_metrics(record)
    t.run.print(epoch_line(record, t.cfg.epochs))
    if t.board is not None:
        write_epoch(t.board, record)
    metrics = {key: value for key, value in record.items() if key not in TIMINGS}
    header = {**t.header, "epoch": record["epoch"], "metrics": metrics}
    state = t.evaluated.state_dict()
    score = _score(t, record)
    best = score > t.best_score
    if best:
        t.best_score, t.best_epoch, t.bad_epochs = score, record["epoch"], 0
    else:
        t.bad_epochs += 1
    if t.stopped_early:
        t.run.print(
            f"Early stop: no better {'validation' if t.val_loader else 'training'} "
            f"{'accuracy' if _by_accuracy(t) else 'loss'} in {t.bad_epochs} epochs "
            f"(--patience {t.cfg.patience}); best epoch {t.best_epoch}"
        )
    if t.world.is_main:
        save_checkpoint(t.run.file("last.safetensors"), state, header)
        if best:
            save_checkpoint(t.run.file("best.safetensors"), state, header)


def _by_accuracy(t: Training) -> bool:
    """Whether the best epoch is the one of highest validation accuracy (else lowest loss)."""
    return t.val_loader is not None and not t.regression and t.cfg.best_by == "accuracy"


def _score(t: Training, record: dict[str, Any]) -> float:
    """Higher is better: validation accuracy (``--best-by accuracy``), or minus the
    validation loss (``--best-by loss``, regression), or minus the training loss."""
    if _by_accuracy(t):
        return record["val_acc"]
    return -(record["val_loss"] if t.val_loader is not None else record["train_loss"])


def save_training_state(t: Training, tally: EpochTally | None) -> None:
    """Write the training state (``checkpoints.state``): at the end of an epoch (``tally``
    None, its losses and weights checked by ``validate``) or within one. A non-finite
    loss since the last state, or non-finite weights, are never saved."""
    if tally is not None:
        check_finite(t, tally, weights=True)
    assert t.phase is not None
    state = {
        "command": t.cfg.command,
        "config": t.requested,
        "resolved": t.cfg.to_dict(),
        "header": t.header,
        "model": t.model.state_dict(),
        "averaged": None if t.average is None else t.average.state_dict(),
        "optimizer": t.phase.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),
        "phase": t.phase.index,
        "phase_start_step": t.phase.first_step,
        "epoch": len(t.history),
        "steps_done": t.steps_done,
        "tally": t.world.gather(None if tally is None else tally.state_dict()),
        "best_score": t.best_score,
        "best_epoch": t.best_epoch,
        "bad_epochs": t.bad_epochs,
        "skipped_steps": t.skipped_steps,
        "history": t.history,
        "elapsed_s": t.elapsed_s,
        "threads": torch.get_num_threads(),
        "world": t.world.size,
        "rng": t.world.gather(capture_rng(t.precision.device)),
        "ran_as": str(t.precision),
    }
    if t.world.is_main:
        save_state(t.run.file(STATE_FILE), state)
    t.last_save = time.perf_counter()


def restore_progress(t: Training, state: dict[str, Any]) -> None:
    """Weights, history and counters of a resumed run (what the phases need to know)."""
    t.model.load_state_dict(state["model"])
    if t.average is not None:
        t.average.load_state_dict(state["averaged"])
    t.history = list(state["history"])
    t.best_score, t.best_epoch = state["best_score"], state["best_epoch"]
    t.bad_epochs = state["bad_epochs"]
    t.steps_done, t.skipped_steps = state["steps_done"], state["skipped_steps"]
    t.elapsed_before = state["elapsed_s"]
    t.run.rewrite_metrics(t.history)


def restore_phase(t: Training, state: dict[str, Any]) -> EpochTally | None:
    """Optimiser, scaler and random streams of the resumed phase, and its lr schedule at the
    step reached (rebuilt: a resume with another ``--epochs`` takes its lr from the first
    step); the running sums of the epoch it stopped in (None: it stopped between epochs)."""
    assert t.phase is not None
    t.phase.optimizer.load_state_dict(state["optimizer"])
    reschedule(t, t.phase.total_steps)  # the schedule at its step, of this run's length
    ran_as = state.get("ran_as", str(t.precision))  # older states do not say
    if ran_as != str(t.precision):
        warnings.warn(
            f"--resume: the run trained as {ran_as}, this machine trains it as "
            f"{t.precision}; the run will not match an uninterrupted one",
            stacklevel=2,
        )
    if state["scaler"] or not t.scaler.is_enabled():  # fp16 after bf16 or fp32: a new
        t.scaler.load_state_dict(state["scaler"])  # scale, found again in a few steps
    rank = t.world.rank % state["world"]  # another world: not exact, as --resume warned
    restore_rng(state["rng"][rank], t.precision.device)
    t.resume = None
    if state["tally"][0] is None:
        return None
    tally = EpochTally(t.precision.device, t.regression)
    tally.load_state_dict(state["tally"][rank])
    return tally


# --- the run's length: --time-budget ------------------------------------------------------


def fit_to_budget(t: Training, seconds: float) -> None:
    """Measure the run's speed on a copy of its model and optimiser, set its length to what
    fits in ``seconds`` (the budget left), and keep the budget to fit the rest of the run
    again after each epoch."""
    deadline = time.perf_counter() + seconds
    model = copy.deepcopy(t.model)
    probe = TrainStep(
        t.world.wrap(model), build_optimizer(model, t.cfg), t.loss_fn, t.precision, t.transform,
        scaler=copy.deepcopy(t.scaler), options=t.step_options, compile=t.compiled,
        report=lambda _: None,
    )  # fmt: skip
    tally = EpochTally(t.precision.device, t.regression)
    t.order.set_epoch(1)
    speed = measure_speed(
        probe, tally, t.train_loader, t.val_loader, model, t.normalize, t.world.max
    )
    val_batches = 0 if t.val_loader is None else len(t.val_loader)
    # BatchNorm recomputation: forward passes of training batches, half an evaluation batch each
    bn_batches = 0 if t.average is None else BN_SAMPLES / (2 * t.order.batch_size)
    pace = pace_of(speed, val_batches, bn_batches, tta=t.cfg.tta == "flip")
    t.budget = Budget(deadline, pace, t.steps_per_epoch, t.world.max, t.run.print)
    set_length(t, t.budget.first_length(speed, seconds, t.cfg.limit_steps))


def set_length(t: Training, length: Length) -> None:
    """Make the run (one phase) ``length`` long (what ``--time-budget`` chose), its warmup
    scaled to keep its share of the run: in the config, the request that a resume or a replay
    repeats, and the checkpoints' recipe; the budget itself is then spent. During training,
    the lr schedule goes on over the new length."""
    epochs, limit_steps = length.epochs, length.limit_steps
    before = t.total_steps(t.cfg.epochs, first_step=0)
    t.cfg = replace(t.cfg, epochs=epochs, limit_steps=limit_steps)
    after = t.total_steps(epochs, first_step=0)
    warmup = round(t.cfg.warmup_epochs * after / before, 4)
    changes = {
        "epochs": epochs, "limit_steps": limit_steps, "warmup_epochs": warmup,
        "time_budget": None,
    }  # fmt: skip
    t.cfg = replace(t.cfg, **changes)
    t.requested = {**t.requested, **changes}
    t.header = {**t.header, "recipe": {**t.header["recipe"], **changes}}
    if t.phase is not None:
        reschedule(t, after)


def reschedule(t: Training, total_steps: int) -> None:
    """The current phase's lr schedule made ``total_steps`` long, at the step the phase has
    reached: the optimiser's lr set for its next step."""
    assert t.phase is not None
    done = t.steps_done - t.phase.first_step
    t.phase.scheduler = build_scheduler(
        t.phase.optimizer, t.cfg, total_steps, t.steps_per_epoch, last_step=done - 1
    )
    t.phase.total_steps = total_steps


# --- the test ---------------------------------------------------------------------------


def test_best(t: Training, title: str) -> dict[str, Any] | None:
    """Plot the curves, reload the best weights and test them (or validate, without a test
    split); write confusion.json/png (test_metrics.json for regression) and print the
    article's final accuracy line."""
    if t.board is not None:
        t.board.close()
    if t.world.is_main:
        plot_curves(t.history, t.run.file("curves.png"), title)
    bundle = t.bundle
    split_name = "test" if bundle.test is not None else "validation"
    dataset = bundle.test if bundle.test is not None else bundle.val
    if dataset is None or not t.history:
        return None
    best = load_checkpoint(t.run.file("best.safetensors"))[0] if t.world.is_main else None
    t.model.load_state_dict(t.world.broadcast(best))
    loader = eval_loader(dataset, t.cfg, t.world, t.precision.device)
    outputs, targets, _ = predict_split(t, loader, t.model, tta=t.cfg.tta == "flip")
    if t.regression:
        report = {**regression_report(outputs, targets, bundle.target_scale), "split": split_name}
        if t.world.is_main:
            t.run.write_json("test_metrics.json", report)
            t.run.print(f"Best epoch: {t.best_epoch} (best.safetensors)")
            t.run.print(f"RMSE of the network on the {split_name} rows: {report['rmse']:.4g}")
        return report
    report = {**classification_report(outputs, targets, bundle.classes), "split": split_name}
    if not t.world.is_main:
        return report
    t.run.write_json("confusion.json", report)
    _plot_time_to_accuracy(t, report["accuracy"], split_name, title)
    plot_confusion(
        report["confusion"], bundle.classes, t.run.file("confusion.png"),
        f"{title}, {split_name} split ({report['accuracy']:.1f}%)",
    )  # fmt: skip
    t.run.print(f"Best epoch: {t.best_epoch} (best.safetensors)")
    t.run.print(f"Accuracy of the network on the {split_name} images: {report['accuracy']:.1f}%")
    return report


def _plot_time_to_accuracy(t: Training, accuracy: float, split_name: str, title: str) -> None:
    """time_to_accuracy.png: validation accuracy per epoch against the run's wall-clock
    time, and the final evaluation's ``accuracy`` (with TTA, if asked) at its end."""
    curve = [(h["elapsed_s"] / 60, h["val_acc"]) for h in t.history if h["val_acc"] is not None]
    if not curve:
        return
    label = f"{t.cfg.model}" + (f", --recipe {t.cfg.recipe}" if t.cfg.recipe else "")
    tta = ", flip TTA" if t.cfg.tta else ""
    plot_time_to_accuracy(
        {label: ([m for m, _ in curve], [a for _, a in curve])},
        {label: (t.elapsed_s / 60, accuracy)},
        t.run.file("time_to_accuracy.png"),
        f"{title}: {split_name} accuracy {accuracy:.1f}% (star{tta})",
    )
