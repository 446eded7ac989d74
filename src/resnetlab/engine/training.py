"""The one training sequence that `train`, `finetune`, `lr-find` and the experiments share:
check the config -> load the data -> build or load the model -> train in phases -> test."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from resnetlab.data import ImageOptions, TableOptions, data_kind, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import default_cache_dir
from resnetlab.data.shard_stream import ShardStream
from resnetlab.engine.baselines import compare_with_baselines
from resnetlab.engine.batches import BatchOrder, make_loader
from resnetlab.engine.board import summary_writer
from resnetlab.engine.budget import fit_to_budget
from resnetlab.engine.config import AUTO_MODEL, TrainConfig
from resnetlab.engine.distributed import launched_world
from resnetlab.engine.finetune import fit_phases
from resnetlab.engine.finetune_config import FinetuneConfig, Phase
from resnetlab.engine.loop import Normalizer
from resnetlab.engine.precision import Precision, resolve_device
from resnetlab.engine.rundir import REPLAY_OMITS, RunDir
from resnetlab.engine.state import STATE_FILE, load_state
from resnetlab.engine.state_dicts import WeightsFile, read_weights
from resnetlab.engine.trainer import Trainer
from resnetlab.engine.weights import (
    LoadReport,
    load_pretrained,
    model_for_header,
    source_preprocessing,
)
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, get_model_spec
from resnetlab.settings import resumable

Config = TypeVar("Config", bound=TrainConfig)


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    test_report: dict[str, Any] | None = None


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
        _check_data_kind(cfg.model, cfg, kind)
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


def _check_data_kind(model: str, cfg: TrainConfig, kind: str) -> None:
    spec = get_model_spec(model)
    if spec.data_kind != kind:
        raise ResnetlabError(
            f"--model {model} takes {spec.data_kind} data, but --data {cfg.data} is {kind} data"
        )


def load_bundle(cfg: TrainConfig) -> DataBundle:
    """The data named by ``cfg.data``, split as ``cfg`` asks (under ``torchrun``, rank 0
    first: it builds the decoded-image cache that the other processes then read)."""
    with launched_world().main_first():
        return _load_bundle(cfg)


def _load_bundle(cfg: TrainConfig) -> DataBundle:
    return load_data(
        cfg.data,
        target=cfg.target,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        image_size=cfg.image_size,
        image_options=image_options(cfg),
        table_options=table_options(cfg),
    )


def table_options(cfg: TrainConfig) -> TableOptions:
    """How to read a table for this run (delimiter, categories, scaling, task, missing targets)."""
    return TableOptions(
        delimiter=cfg.delimiter,
        categorical=tuple(cfg.categorical or ()),
        max_categories=cfg.max_categories,
        numeric_transform=cfg.numeric_transform,
        task=cfg.task,
        strict=cfg.strict,
    )


def auto_batch_size(samples: int) -> int:
    """The batch for ``--batch-size 0``: the power of two nearest ``samples / 16`` (about 16
    steps an epoch), within [16, 256]."""
    return min(256, max(16, 2 ** round(math.log2(max(samples, 1) / 16))))


def resolve_for_data(cfg: Config, bundle: DataBundle) -> Config:
    """``cfg`` with what the data decides: the loss (ce for classes, mse for a quantity; a
    loss of the other task is an error) and, if not given, the batch size."""
    regression = bundle.task == "regression"
    loss = cfg.loss or ("mse" if regression else "ce")
    if (loss in ("mse", "huber")) != regression:
        raise ResnetlabError(
            f"--loss {loss} does not fit {bundle.task} (--data {cfg.data}); "
            + ("use mse or huber" if regression else "use ce or bce")
        )
    if regression and cfg.class_weight:
        raise ResnetlabError(f"--class-weight applies to classes; --data {cfg.data} is regression")
    batch_size = cfg.batch_size or auto_batch_size(len(bundle.train))
    return replace(cfg, loss=loss, batch_size=batch_size)


def image_options(cfg: TrainConfig) -> ImageOptions:
    """How to read an image folder for this run (cache, bad files, split folders, streaming)."""
    return ImageOptions(
        cache_dir=cfg.cache_dir or default_cache_dir(),
        cache_mem_gb=cfg.cache_mem,
        strict=cfg.strict,
        val_dir=cfg.val_dir,
        test_dir=cfg.test_dir,
        image_column=cfg.image_column,
        augment=cfg.flip or cfg.flip_alternate,
        auto_augment=cfg.auto_augment,
        random_erasing=cfg.random_erasing,
    )


def num_outputs(cfg: TrainConfig, bundle: DataBundle) -> int:
    """Classifier outputs: one logit for binary cross-entropy, else one per class; one output
    for regression."""
    if bundle.task == "regression":
        return 1
    if cfg.loss == "bce" and bundle.num_classes != 2:
        raise ResnetlabError(
            f"--loss bce needs 2 classes; --data {cfg.data} has {bundle.num_classes}"
        )
    return 1 if cfg.loss == "bce" else bundle.num_classes


def build_for_data(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    """The model named in ``cfg``, sized for ``bundle`` (classes, input channels)."""
    _check_data_kind(cfg.model, cfg, bundle.kind)
    return create_model(
        cfg.model,
        num_classes=num_outputs(cfg, bundle),
        in_chans=bundle.input_shape[0],
        **cfg.model_options,
    )


WHITEN_SAMPLES = 5000  # training images whose patch covariance sets a whitening stem


def init_from_data(model: nn.Module, bundle: DataBundle, seed: int) -> None:
    """Give a model that has a data-dependent init (``whiten_``, e.g. the speed-run
    network's stem) up to ``WHITEN_SAMPLES`` normalised training images, drawn by ``seed``."""
    whiten = getattr(model, "whiten_", None)
    if whiten is None:
        return
    order = BatchOrder(len(bundle.train), WHITEN_SAMPLES, shuffle=True, seed=seed)
    x = next(iter(make_loader(bundle.train, order)))[0]
    whiten(Normalizer(bundle.mean, bundle.std, bundle.input_shape)(x))


def load_for_weights(
    cfg: Config, weights: WeightsFile
) -> tuple[Config, DataBundle, nn.Module, LoadReport]:
    """Data and model for a run that starts from ``weights`` (``cfg.weights``, read by
    ``read_weights``), and ``cfg`` naming that model.

    The data is sized and normalised as the weights expect (``source_preprocessing``: the
    flags, else their resnetlab header, else the data's own statistics). The model is
    ``cfg.model`` (``auto``: the weights' header or inferred from their keys) with a seeded new
    head for the data's classes and a stem adapted to its channels, as the report says.
    """
    preprocessing = source_preprocessing(weights, cfg.mean, cfg.std, cfg.image_size)
    bundle = load_bundle(replace(cfg, image_size=preprocessing.input_size))
    cfg = resolve_for_data(cfg, bundle)
    stats = preprocessing.normalisation(bundle.input_shape[0])
    if stats is not None:
        bundle = replace(bundle, mean=stats[0], std=stats[1])
    torch.manual_seed(cfg.seed)
    model, report = load_pretrained(
        weights,
        model_name=None if cfg.model == AUTO_MODEL else cfg.model,
        num_classes=num_outputs(cfg, bundle),
        in_chans=bundle.input_shape[0],
        **cfg.model_options,
    )
    _check_data_kind(report.model, cfg, bundle.kind)
    resolved = replace(
        cfg,
        model=report.model,
        model_options=report.model_options,
        image_size=preprocessing.input_size,
    )
    return resolved, bundle, model, report


def data_header(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    """What `eval`, `predict` and `finetune` need to know about the data a model was trained
    on: classes, input, normalisation, and where each split came from (see ``DataBundle``)."""
    return {
        "classes": bundle.classes,
        "input_shape": list(bundle.input_shape),
        "data_kind": bundle.kind,
        "mean": bundle.mean,
        "std": bundle.std,
        "feature_names": bundle.feature_names,
        "task": bundle.task,
        "table": bundle.table,
        "data": {
            "source": cfg.data,
            "target": cfg.target,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
            "image_size": cfg.image_size,
            "val_dir": cfg.val_dir,
            "test_dir": cfg.test_dir,
            "image_column": cfg.image_column,
            "split": bundle.split_record,
        },
    }


def checkpoint_header(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    """What every checkpoint of a run records: the architecture, the data and the recipe."""
    return {
        "model": cfg.model,
        "model_options": cfg.model_options,
        "num_classes": num_outputs(cfg, bundle),
        "in_chans": bundle.input_shape[0],
        "loss": cfg.loss,
        **data_header(cfg, bundle),
        "recipe": {k: v for k, v in cfg.to_dict().items() if k not in REPLAY_OMITS},
    }


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
    state = load_state(Path(cfg.resume) / STATE_FILE)
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


def describe_run(
    cfg: TrainConfig, model: nn.Module, bundle: DataBundle, precision: Precision
) -> str:
    """One line saying what is about to be trained, on what, and how."""
    sizes = " / ".join(
        f"{len(split)} {name}"
        for name, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
        if split is not None
    )
    params = sum(p.numel() for p in model.parameters())
    task = "regression" if bundle.task == "regression" else f"{bundle.num_classes} classes"
    return (
        f"{cfg.model} ({params:,} params) on {bundle.name}: {sizes}, {task}, "
        f"input {'x'.join(map(str, bundle.input_shape))} | {precision} | "
        f"{cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}"
    )


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
    cfg, bundle = start.cfg, start.bundle
    if start.report is not None:
        run.print(start.report.summary())
    trainer = Trainer(
        start.model, bundle, cfg, run, start.header,
        requested=start.requested, resume=start.resume,
    )  # fmt: skip
    if cfg.time_budget is not None and start.resume is None:
        elapsed = 0.0 if began is None else time.perf_counter() - began
        fit_to_budget(trainer, 60 * cfg.time_budget - elapsed)
        cfg, phases = trainer.cfg, single_phase(trainer.cfg)  # a budget is `train`'s: one phase
    run.ran_as = str(trainer.precision)
    run.write_config(cfg.to_dict())
    run.print(describe_run(cfg, trainer.model, bundle, trainer.precision))
    run.print(f"run folder: {run.path}")
    run.print(f"data pipeline: {trainer.bundle.pipeline}")
    if bundle.table is not None:
        run.print(f"task: {bundle.task} ({bundle.table['task_rule']}; --task overrides)")
    if start.resume is not None:
        done, steps = start.resume["epoch"], start.resume["steps_done"]
        run.print(f"resuming after epoch {done}, step {steps}")
    fit_phases(trainer, phases, bn_policy, stage_decay, announce=announce_phases)
    report = trainer.finish(title or f"{cfg.model} on {bundle.name}")
    if cfg.baselines and report is not None and trainer.world.is_main:
        compare_with_baselines(bundle, report, run)
    return TrainResult(run.path, trainer.history, trainer.best_epoch, report)
