"""The one training sequence that `train`, `finetune`, `lr-find` and the experiments share:
check the config -> load the data -> build or load the model -> train in phases -> test."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from resnetlab.data import ImageOptions, data_kind, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import default_cache_dir
from resnetlab.engine.config import AUTO_MODEL, TrainConfig
from resnetlab.engine.finetune import Phase, fit_phases
from resnetlab.engine.precision import Precision
from resnetlab.engine.rundir import RunDir
from resnetlab.engine.trainer import Trainer
from resnetlab.engine.weights import LoadReport, load_pretrained, source_preprocessing
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, get_model_spec

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


def check_run(cfg: TrainConfig) -> None:
    """Refuse a run that cannot work before its run folder is made: invalid flags, a model
    for another kind of data, or batch mixing of data that is not images."""
    cfg.validate()
    kind = data_kind(cfg.data)
    if cfg.model != AUTO_MODEL:
        _check_data_kind(cfg.model, cfg, kind)
    if (cfg.mixup or cfg.cutmix) and kind != "image":
        raise ResnetlabError(f"--mixup/--cutmix mix images; --data {cfg.data} is {kind} data")
    if cfg.tta is not None and kind != "image":
        raise ResnetlabError(f"--tta {cfg.tta} applies to images, not {kind} data")


def _check_data_kind(model: str, cfg: TrainConfig, kind: str) -> None:
    spec = get_model_spec(model)
    if spec.data_kind != kind:
        raise ResnetlabError(
            f"--model {model} takes {spec.data_kind} data, but --data {cfg.data} is {kind} data"
        )


def load_bundle(cfg: TrainConfig) -> DataBundle:
    """The data named by ``cfg.data``, split as ``cfg`` asks."""
    return load_data(
        cfg.data,
        target=cfg.target,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        image_size=cfg.image_size,
        image_options=image_options(cfg),
    )


def image_options(cfg: TrainConfig) -> ImageOptions:
    """How to read an image folder for this run (cache, bad files, split folders, streaming)."""
    return ImageOptions(
        cache_dir=cfg.cache_dir or default_cache_dir(),
        cache_mem_gb=cfg.cache_mem,
        strict=cfg.strict,
        val_dir=cfg.val_dir,
        test_dir=cfg.test_dir,
        augment=cfg.flip or cfg.flip_alternate,
        auto_augment=cfg.auto_augment,
        random_erasing=cfg.random_erasing,
    )


def num_outputs(cfg: TrainConfig, bundle: DataBundle) -> int:
    """Classifier outputs: one logit for binary cross-entropy, else one per class."""
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


def load_for_weights(cfg: Config) -> tuple[Config, DataBundle, nn.Module, LoadReport]:
    """Data and model for a run that starts from ``cfg.weights``, and ``cfg`` naming that model.

    The data is sized and normalised as the weights expect (``source_preprocessing``: the
    flags, else their resnetlab header, else the data's own statistics). The model is
    ``cfg.model`` (``auto``: the weights' header or inferred from their keys) with a seeded new
    head for the data's classes and a stem adapted to its channels, as the report says.
    """
    preprocessing = source_preprocessing(cfg.weights, cfg.mean, cfg.std, cfg.image_size)
    bundle = load_bundle(replace(cfg, image_size=preprocessing.input_size))
    stats = preprocessing.normalisation(bundle.input_shape[0])
    if stats is not None:
        bundle = replace(bundle, mean=stats[0], std=stats[1])
    torch.manual_seed(cfg.seed)
    model, report = load_pretrained(
        cfg.weights,
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
        "data": {
            "source": cfg.data,
            "target": cfg.target,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
            "image_size": cfg.image_size,
            "val_dir": cfg.val_dir,
            "test_dir": cfg.test_dir,
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
        "recipe": cfg.to_dict(),
    }


def start_run(cfg: TrainConfig) -> Start:
    """Load the data and build the model (from ``cfg.weights`` if given), seeded by the run."""
    if cfg.weights:
        cfg, bundle, model, report = load_for_weights(cfg)
        start = Start(cfg, bundle, model, report=report)
        start.header = {**checkpoint_header(cfg, bundle), "weights": report.provenance()}
        return start
    bundle = load_bundle(cfg)
    torch.manual_seed(cfg.seed)
    model = build_for_data(cfg, bundle)
    return Start(cfg, bundle, model, checkpoint_header(cfg, bundle))


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
    memory = ", channels-last" if precision.channels_last else ""
    return (
        f"{cfg.model} ({params:,} params) on {bundle.name}: {sizes}, {bundle.num_classes} classes, "
        f"input {'x'.join(map(str, bundle.input_shape))} | {precision.device.type} "
        f"{precision.name}{memory} | {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, "
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
) -> TrainResult:
    """Train ``start.model`` in ``run``: config.yaml, the run's description, each phase's
    epochs with checkpoints (``announce_phases``: a line per phase), then the final
    evaluation of the best checkpoint."""
    cfg, bundle = start.cfg, start.bundle
    if start.report is not None:
        run.print(start.report.summary())
    trainer = Trainer(start.model, bundle, cfg, run, start.header)
    run.write_config(cfg.to_dict())
    run.print(describe_run(cfg, trainer.model, bundle, trainer.precision))
    run.print(f"run folder: {run.path}")
    run.print(f"data pipeline: {bundle.pipeline}")
    fit_phases(trainer, phases, bn_policy, stage_decay, announce=announce_phases)
    report = trainer.finish(title or f"{cfg.model} on {bundle.name}")
    return TrainResult(run.path, trainer.history, trainer.best_epoch, report)
