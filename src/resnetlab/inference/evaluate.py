"""`resnetlab eval`: score a checkpoint on a data split; needs nothing but the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from resnetlab.checkpoints.state_dicts import read_weights
from resnetlab.checkpoints.weights import LoadReport
from resnetlab.config.train import AUTO_MODEL, TrainConfig
from resnetlab.data.bundle import DataBundle
from resnetlab.errors import ResnetlabError
from resnetlab.inference.checkpoint_data import is_training_data, load_data_like, pick_split
from resnetlab.inference.exported import is_exported, load_network
from resnetlab.runtime.compiled import should_compile
from resnetlab.runtime.precision import Precision, resolve_device, resolve_precision
from resnetlab.training.batches import make_loader
from resnetlab.training.metrics import regression_report
from resnetlab.training.start import load_for_weights
from resnetlab.training.step import Normalizer, evaluate_model, predict

_NOT_KEPT = " (the training run kept none); give held-out data with --data"
_NOT_TRAINING_DATA = (
    " (data other than the training data is split only by its own train/, val/, test/ "
    "folders); --split all evaluates all of it"
)


@dataclass
class EvalConfig:
    """Flags of `resnetlab eval`: a ``checkpoint`` from `train`/`finetune`, or ``weights`` from
    anywhere (then ``data`` is required, and ``mean``/``std``/``image_size`` say how the weights
    expect their inputs if the file does not)."""

    checkpoint: str | None = None
    weights: str | None = None
    data: str | None = None
    split: str | None = None  # None: test for the training data, all for any other data
    model: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int | None = None
    batch_size: int = 256
    tta: str | None = None
    precision: str = "auto"
    device: str = "auto"
    workers: int = 0
    compile: str = "off"


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Top-1, top-5 (10+ classes), per-class accuracy and confusion matrix on one split; for a
    regression checkpoint, RMSE, MAE and R² in the target's units."""
    if (cfg.checkpoint is None) == (cfg.weights is None):
        raise ResnetlabError("eval needs either --checkpoint or --weights (one of them)")
    if cfg.batch_size < 1:
        raise ResnetlabError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    if cfg.checkpoint is not None:
        model, header = load_network(cfg.checkpoint, expect_model=cfg.model)
        bundle = replace(load_data_like(header, cfg.data), mean=header["mean"], std=header["std"])
        source = {"checkpoint": str(cfg.checkpoint), "model": header["model"]}
        if is_training_data(header, cfg.data):
            split, why_absent = cfg.split or "test", _NOT_KEPT
        else:
            split, why_absent = cfg.split or "all", _NOT_TRAINING_DATA
    else:
        model, bundle, report = _load_weights(cfg)
        source = {"weights": cfg.weights, "model": report.model, "loaded": report.summary()}
        split, why_absent = cfg.split or "test", ""
    dataset = pick_split(bundle, split, why_absent)
    exported = cfg.checkpoint is not None and is_exported(cfg.checkpoint)
    if exported:  # run as exported: fp32, never compiled
        precision = Precision(torch.device("cpu"), None, channels_last=False)
    else:
        precision = resolve_precision(cfg.precision, resolve_device(cfg.device), bundle.kind)
    model = precision.prepare(model)
    normalize = Normalizer(bundle.mean, bundle.std, bundle.input_shape)
    if cfg.tta is not None and bundle.kind != "image":
        raise ResnetlabError(f"--tta {cfg.tta} applies to images, not {bundle.kind} data")
    if bundle.task == "regression":
        loader = make_loader(dataset, cfg.batch_size, workers=cfg.workers)
        outputs, targets, _ = predict(model, loader, precision, normalize, regression=True)
        result = regression_report(outputs, targets, bundle.target_scale)
    else:
        result = evaluate_model(
            model, dataset, bundle.classes, precision, normalize, cfg.batch_size, cfg.workers,
            tta=cfg.tta == "flip",
            compile=not exported and should_compile(cfg.compile, bundle.kind, precision.device),
        )  # fmt: skip
    result.update(source, split=split)
    return result


def _load_weights(cfg: EvalConfig) -> tuple[nn.Module, DataBundle, LoadReport]:
    """Model and data for weights from anywhere; their classifier must fit the data's classes."""
    if cfg.data is None:
        raise ResnetlabError("eval --weights needs --data (the data to score the weights on)")
    as_training = TrainConfig(
        model=cfg.model or AUTO_MODEL,
        data=cfg.data,
        image_size=cfg.image_size,
        weights=cfg.weights,
        mean=cfg.mean,
        std=cfg.std,
    )
    _, bundle, model, report = load_for_weights(as_training, read_weights(cfg.weights))
    if report.reinitialised:
        reason = report.reasons[report.reinitialised[0]]
        raise ResnetlabError(
            f"--weights {cfg.weights}: the classifier does not fit --data {cfg.data} "
            f"({reason}); fine-tune it first (resnetlab finetune)"
        )
    return model, bundle, report
