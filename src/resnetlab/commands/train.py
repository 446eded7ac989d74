"""`resnetlab train`: preprocess -> build -> train -> validate -> test, in one run folder."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from resnetlab.data import ImageOptions, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import default_cache_dir
from resnetlab.engine.config import AUTO_MODEL, TrainConfig
from resnetlab.engine.optim import build_optimizer, build_scheduler
from resnetlab.engine.precision import Precision
from resnetlab.engine.rundir import RunDir, default_run_dir
from resnetlab.engine.state_dicts import WeightsFile, read_weights
from resnetlab.engine.trainer import Trainer
from resnetlab.engine.weights import (
    LoadReport,
    load_pretrained,
    source_preprocessing,
)
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


def data_header(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    """What `eval`, `predict` and `finetune` need to know about the data a model was trained on."""
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
        },
    }


def num_outputs(cfg: TrainConfig, bundle: DataBundle) -> int:
    """Classifier outputs: one logit for binary cross-entropy, else one per class."""
    if cfg.loss == "bce" and bundle.num_classes != 2:
        raise ResnetlabError(
            f"--loss bce needs 2 classes; --data {cfg.data} has {bundle.num_classes}"
        )
    return 1 if cfg.loss == "bce" else bundle.num_classes


def _check_data_kind(model: str, cfg: TrainConfig, bundle: DataBundle) -> None:
    spec = get_model_spec(model)
    if spec.data_kind != bundle.kind:
        raise ResnetlabError(
            f"--model {model} takes {spec.data_kind} data, "
            f"but --data {cfg.data} is {bundle.kind} data"
        )


def build_for_data(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    """The model named in ``cfg``, sized for ``bundle`` (classes, input channels)."""
    _check_data_kind(cfg.model, cfg, bundle)
    return create_model(
        cfg.model,
        num_classes=num_outputs(cfg, bundle),
        in_chans=bundle.input_shape[0],
        **cfg.model_options,
    )


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
    _check_data_kind(report.model, cfg, bundle)
    resolved = replace(
        cfg,
        model=report.model,
        model_options=report.model_options,
        image_size=preprocessing.input_size,
    )
    return resolved, bundle, model, report


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


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; write checkpoints, metrics and figures to the run.

    With ``cfg.weights`` the model starts from that file (see ``load_for_weights``), and the
    checkpoints record its name and sha256. A missing or damaged file fails before the run
    folder is made.
    """
    cfg.validate()
    if cfg.model != AUTO_MODEL:
        get_model_spec(cfg.model)
    weights = read_weights(cfg.weights) if cfg.weights else None
    name = Path(cfg.weights).stem if cfg.weights and cfg.model == AUTO_MODEL else cfg.model
    with RunDir(cfg.out or default_run_dir(name, cfg.data)) as run:
        return _train(cfg, run, weights)


def _train(cfg: TrainConfig, run: RunDir, weights: WeightsFile | None) -> TrainResult:
    if weights is not None:
        cfg, bundle, model, report = load_for_weights(cfg, weights)
        run.print(report.summary())
        source: dict[str, Any] = {"weights": report.provenance()}
    else:
        bundle = load_bundle(cfg)
        torch.manual_seed(cfg.seed)
        model = build_for_data(cfg, bundle)
        source = {}
    header = {**checkpoint_header(cfg, bundle), **source}
    return fit_in_run(cfg, run, bundle, model, header)


def fit_in_run(
    cfg: TrainConfig,
    run: RunDir,
    bundle: DataBundle,
    model: nn.Module,
    header: dict[str, Any],
    *,
    title: str | None = None,
) -> TrainResult:
    """Train a built ``model`` on loaded ``bundle`` in ``run``: config.yaml, the run's
    description, ``cfg.epochs`` epochs with checkpoints, then the final evaluation."""
    trainer = Trainer(model, bundle, cfg, run, header)
    run.write_config(cfg.to_dict())
    run.print(describe_run(cfg, trainer.model, bundle, trainer.precision))
    run.print(f"run folder: {run.path}")
    run.print(f"data pipeline: {bundle.pipeline}")
    optimizer = build_optimizer(trainer.model, cfg)
    total_steps = trainer.total_steps(cfg.epochs)
    scheduler = build_scheduler(optimizer, cfg, total_steps, trainer.steps_per_epoch)
    trainer.fit(optimizer, scheduler, cfg.epochs)
    report = trainer.finish(title or f"{cfg.model} on {bundle.name}")
    return TrainResult(run.path, trainer.history, trainer.best_epoch, report)


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
