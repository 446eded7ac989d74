"""The detector a `detect train` run starts from: fresh, or on a classifier's trained weights."""

from __future__ import annotations

import torch
from torch import nn

from resnetlab.checkpoints.state_dicts import WeightsFile
from resnetlab.checkpoints.weights import load_pretrained, source_preprocessing
from resnetlab.detection.config import DetectConfig
from resnetlab.detection.model import IMAGENET_MEAN, IMAGENET_STD, DetectorSpec, build_detector


def start_detector(
    cfg: DetectConfig, classes: list[str], weights: WeightsFile | None
) -> tuple[nn.Module, DetectorSpec, str | None]:
    """``(detector, its spec, a line on the weights loaded or None)``, seeded by ``cfg.seed``.

    From ``weights`` (a resnetlab checkpoint, or a torchvision/timm state dict) the classifier
    is loaded, its head dropped, and the images normalised as its header says (else with
    ImageNet's statistics, which torchvision's and timm's weights expect).
    """
    torch.manual_seed(cfg.seed)
    spec = DetectorSpec(
        cfg.model,
        classes,
        detector=cfg.detector,
        norm=cfg.resolved_norm,
        trainable_stages=cfg.resolved_trainable_stages,
        image_size=cfg.image_size,
    )
    if weights is None:
        return build_detector(spec), spec, None
    body, report = load_pretrained(weights, model_name=cfg.model, in_chans=3)
    spec.model_options = report.model_options
    normalisation = source_preprocessing(weights).normalisation(3)
    spec.mean, spec.std = normalisation or (list(IMAGENET_MEAN), list(IMAGENET_STD))
    return build_detector(spec, body), spec, report.summary()
