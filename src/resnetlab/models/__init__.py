"""Every network of resnetlab, built from scratch, by name: ``create_model("resnet20")``.

Importing this package registers all models.
"""

from resnetlab.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ShortcutA,
)
from resnetlab.models.cifar import CifarResNet
from resnetlab.models.classifier import ClassifierMixin, classifier_prefix
from resnetlab.models.complexity import (
    ModelSummary,
    count_macs,
    count_parameters,
    format_count,
    summarize,
)
from resnetlab.models.preact import PreActResNet
from resnetlab.models.registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from resnetlab.models.resnet import ResNet
from resnetlab.models.sequence import Residual1dBlock, ResNet1d
from resnetlab.models.speedrun import SpeedrunBlock, SpeedrunNet
from resnetlab.models.tabular import TabularBlock, TabularResNet
from resnetlab.models.video import VideoBasicBlock, VideoResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ClassifierMixin",
    "ModelSpec",
    "ModelSummary",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PreActResNet",
    "ResNet",
    "ResNet1d",
    "Residual1dBlock",
    "ShortcutA",
    "SpeedrunBlock",
    "SpeedrunNet",
    "TabularBlock",
    "TabularResNet",
    "VideoBasicBlock",
    "VideoResNet",
    "classifier_prefix",
    "count_macs",
    "count_parameters",
    "create_model",
    "format_count",
    "get_model_spec",
    "list_models",
    "register_model",
    "summarize",
]
