"""torchvision's detectors on a resnetlab backbone with a feature pyramid.

The backbone is a ``FeatureNet`` (``create_model(..., features_only=True)``) under torchvision's
``BackboneWithFPN``; the detector is torchvision's ``FasterRCNN``, ``RetinaNet`` or ``FCOS``,
with anchors and proposal counts sized for small inputs (256 px) on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from resnetlab.detection.config import DETECTORS
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.models.features import FeatureNet

NORMS = ("bn", "gn", "frozen")
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # torchvision's detectors' default normalisation
IMAGENET_STD = [0.229, 0.224, 0.225]
FPN_CHANNELS = (
    64  # torchvision: 256; a quarter of the pyramid's cost on a CPU, ample for few classes
)
BOX_FEATURES = 256  # Faster R-CNN's box head width (torchvision: 1024, most of a CPU step)
# Faster R-CNN's sampling and proposal counts, cut from torchvision's (256/512 samples,
# 2000/1000 proposals) for images of a few objects at 256 px: see README, "Detection".
_FASTER_RCNN = {
    "rpn_batch_size_per_image": 128,
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 200,
    "box_batch_size_per_image": 64,
}


@dataclass
class DetectorSpec:
    """Everything that rebuilds a detector: a checkpoint's header carries it."""

    model: str
    classes: list[str]
    detector: str = "fasterrcnn"
    norm: str = "bn"  # bn, gn (GroupNorm, from scratch) or frozen (trained weights)
    trainable_stages: int | None = None  # stages from the top that train; None: all
    image_size: int = 256
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    model_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """A one-line error for a value no detector can be built from."""
        if self.detector not in DETECTORS:
            raise ResnetlabError(f"--detector {self.detector!r}: use one of {', '.join(DETECTORS)}")
        if self.norm not in NORMS:
            raise ResnetlabError(f"--norm {self.norm!r}: use one of {', '.join(NORMS)}")
        if self.image_size < 32:
            raise ResnetlabError(f"--image-size {self.image_size}: need at least 32 px")
        if self.trainable_stages is not None and self.trainable_stages < 0:
            raise ResnetlabError(f"--trainable-stages {self.trainable_stages}: need 0 or more")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)


def build_detector(spec: DetectorSpec, body: nn.Module | None = None) -> nn.Module:
    """The detector ``spec`` describes, on ``body`` (a classifier whose weights are loaded, from
    ``load_pretrained``) or on a fresh ``spec.model``."""
    spec.check()
    if body is None:
        body = create_model(spec.model, **spec.model_options)
    try:
        features = FeatureNet(body)
    except ResnetlabError as exc:
        raise ResnetlabError(f"--model {spec.model}: {exc}") from None
    _set_norm(features, spec.norm)
    _freeze_stages(features, spec.trainable_stages)
    info = features.feature_info
    names = [str(i) for i in range(len(info))]
    backbone = BackboneWithFPN(
        features,
        return_layers={level["module"]: name for level, name in zip(info, names, strict=True)},
        in_channels_list=info.channels(),
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    strides = [*info.reduction(), info.reduction()[-1] * 2]  # the max-pool level last
    common = {
        "num_classes": len(spec.classes) + 1,
        "min_size": spec.image_size,
        "max_size": spec.image_size,
        "image_mean": spec.mean,
        "image_std": spec.std,
    }
    if spec.detector == "fasterrcnn":
        classes = common.pop("num_classes")
        return FasterRCNN(
            backbone,
            rpn_anchor_generator=_anchors(tuple((4 * s,) for s in strides)),
            box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_FEATURES),
            box_predictor=FastRCNNPredictor(BOX_FEATURES, classes),
            **common,
            **_FASTER_RCNN,
        )
    if spec.detector == "retinanet":
        scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        anchors = _anchors(tuple(tuple(4 * s * k for k in scales) for s in strides))
        # GroupNorm in the head's convolutions, as torchvision's RetinaNet v2 and FCOS have:
        # the plain head (v1) found nothing in one epoch from scratch (README, "Detection")
        head = RetinaNetHead(
            FPN_CHANNELS,
            anchors.num_anchors_per_location()[0],
            common["num_classes"],
            norm_layer=partial(nn.GroupNorm, _groups(FPN_CHANNELS)),
        )
        return RetinaNet(backbone, anchor_generator=anchors, head=head, **common)
    # FCOS: one point per location; torchvision reads regression ranges off the sizes.
    return FCOS(backbone, anchor_generator=_anchors(tuple((s,) for s in strides), (1.0,)), **common)


def _anchors(sizes: tuple[tuple[float, ...], ...], ratios: tuple[float, ...] = (0.5, 1.0, 2.0)):
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def _set_norm(features: FeatureNet, norm: str) -> None:
    """BatchNorm kept (``bn``), frozen with its trained statistics, or GroupNorm of up to 32
    groups (a fresh layer: for training from scratch)."""
    if norm == "frozen":
        _replace_batchnorm(features, _frozen)
    elif norm == "gn":
        _replace_batchnorm(
            features, lambda bn: nn.GroupNorm(_groups(bn.num_features), bn.num_features)
        )


def _groups(channels: int) -> int:
    """32 groups, or fewer for narrow layers (the CIFAR family's 16 channels)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def _frozen(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d with ``bn``'s affine parameters and running statistics."""
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, name).copy_(getattr(bn, name).detach())
    return frozen


def _replace_batchnorm(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make(child))
        else:
            _replace_batchnorm(child, make)


def _freeze_stages(features: FeatureNet, trainable: int | None) -> None:
    """Only the last ``trainable`` feature levels (stages, then the stem) keep gradients."""
    if trainable is None:
        return
    frozen = max(len(features.levels) - trainable, 0)
    for index in range(frozen):
        for module in features.level_modules(index):
            module.requires_grad_(False)
