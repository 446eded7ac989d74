"""What a run starts from, as its config names them: the data, loaded and split (and what it
decides of the config: the loss, the batch size), and the model, built for that data or loaded
from weights, with the header that every checkpoint of the run carries."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn

from resnetlab.checkpoints.state_dicts import WeightsFile
from resnetlab.checkpoints.weights import LoadReport, load_pretrained, source_preprocessing
from resnetlab.config.train import AUTO_MODEL, TrainConfig
from resnetlab.data import ImageOptions, TableOptions, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import default_cache_dir
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, get_model_spec
from resnetlab.runtime.distributed import launched_world
from resnetlab.training.batches import BatchOrder, make_loader
from resnetlab.training.rundir import REPLAY_OMITS
from resnetlab.training.step import Normalizer

Config = TypeVar("Config", bound=TrainConfig)


def check_data_kind(model: str, cfg: TrainConfig, kind: str) -> None:
    """Refuse ``model`` for data of another ``kind`` than its own (``cfg.data``'s)."""
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
    check_data_kind(cfg.model, cfg, bundle.kind)
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
    check_data_kind(report.model, cfg, bundle.kind)
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
