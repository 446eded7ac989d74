"""CIFAR ResNets of 6n+2 layers (He et al. 2015, sec. 4.2) and their plain twins (no shortcuts)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from resnetlab.errors import ResnetlabError
from resnetlab.models.blocks import (
    BasicBlock,
    ShortcutA,
    conv3x3,
    init_weights,
    projection,
    zero_init_last_bn,
)
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.features import FeatureLevel
from resnetlab.models.registry import register_model

_WIDTHS = (16, 32, 64)
_SHORTCUTS = ("A", "B", None)


class CifarResNet(ClassifierMixin, nn.Module):
    """3x3 conv 16 + BN + ReLU, three stages of n basic blocks (16/32/64 filters), GAP, ``fc``.

    ``shortcut`` is "A" (zero-padding, parameter-free), "B" (1x1 projection where the shape
    changes) or ``None`` for the plain network of the same layers (He et al. 2015, sec. 4.2).
    """

    kaiming_linear = True

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        shortcut: str | None = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in _SHORTCUTS:
            raise ResnetlabError(f"unknown shortcut option {shortcut!r}; use 'A' or 'B'")
        if zero_init_residual and shortcut is None:
            raise ResnetlabError("zero_init_residual needs shortcuts; a plain network has none")
        self.shortcut = shortcut
        self.conv1 = conv3x3(in_chans, _WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(_WIDTHS[0], _WIDTHS[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(_WIDTHS[0], _WIDTHS[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(_WIDTHS[1], _WIDTHS[2], blocks_per_stage, stride=2)
        self.feature_levels = [
            FeatureLevel(("conv1", "bn1", "relu"), _WIDTHS[0], 1),
            *(FeatureLevel((f"layer{i + 1}",), w, 2**i) for i, w in enumerate(_WIDTHS)),
        ]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(_WIDTHS[2], num_classes)
        init_weights(self, linear=self.kaiming_linear)
        if zero_init_residual:
            zero_init_last_bn(self)

    def _make_layer(
        self, in_channels: int, out_channels: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        """One stage; only its first block changes the shape."""
        residual = self.shortcut is not None
        downsample = self._downsample(in_channels, out_channels, stride)
        blocks = [BasicBlock(in_channels, out_channels, stride, downsample, residual=residual)]
        blocks += [
            BasicBlock(out_channels, out_channels, residual=residual) for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*blocks)

    def _downsample(self, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
        """The shortcut of a shape-changing block; ``None`` (identity or no shortcut) otherwise."""
        if self.shortcut is None or (stride == 1 and in_channels == out_channels):
            return None
        if self.shortcut == "A":
            return ShortcutA(in_channels, out_channels, stride)
        return projection(in_channels, out_channels, stride)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: (N, 64, H/4, W/4)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _cifar(depth: int, num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """A 6n+2-layer network; ``depth`` = 6n+2."""
    return CifarResNet((depth - 2) // 6, num_classes, in_chans, **options)


@register_model("resnet20", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet20(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-20, n=3 (He et al. 2015, Table 6)."""
    return _cifar(20, num_classes, in_chans, **options)


@register_model("resnet32", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet32(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-32, n=5 (He et al. 2015, Table 6)."""
    return _cifar(32, num_classes, in_chans, **options)


@register_model("resnet44", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet44(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-44, n=7 (He et al. 2015, Table 6)."""
    return _cifar(44, num_classes, in_chans, **options)


@register_model("resnet56", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet56(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-56, n=9 (He et al. 2015, Table 6)."""
    return _cifar(56, num_classes, in_chans, **options)


@register_model("resnet110", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet110(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-110, n=18 (He et al. 2015, Table 6)."""
    return _cifar(110, num_classes, in_chans, **options)


@register_model("resnet1202", family="cifar", input_shape=(3, 32, 32), num_classes=10)
def resnet1202(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """ResNet-1202, n=200 (He et al. 2015, sec. 4.2, "Exploring over 1000 layers")."""
    return _cifar(1202, num_classes, in_chans, **options)


def _plain(depth: int, num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """The 6n+2-layer network without shortcuts."""
    return _cifar(depth, num_classes, in_chans, shortcut=None, **options)


@register_model("plain20", family="plain", input_shape=(3, 32, 32), num_classes=10)
def plain20(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """Plain-20: ResNet-20 without shortcuts (He et al. 2015, fig. 6 left)."""
    return _plain(20, num_classes, in_chans, **options)


@register_model("plain32", family="plain", input_shape=(3, 32, 32), num_classes=10)
def plain32(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """Plain-32: ResNet-32 without shortcuts (He et al. 2015, fig. 6 left)."""
    return _plain(32, num_classes, in_chans, **options)


@register_model("plain44", family="plain", input_shape=(3, 32, 32), num_classes=10)
def plain44(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """Plain-44: ResNet-44 without shortcuts (He et al. 2015, fig. 6 left)."""
    return _plain(44, num_classes, in_chans, **options)


@register_model("plain56", family="plain", input_shape=(3, 32, 32), num_classes=10)
def plain56(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """Plain-56: ResNet-56 without shortcuts (He et al. 2015, fig. 6 left)."""
    return _plain(56, num_classes, in_chans, **options)


@register_model("plain110", family="plain", input_shape=(3, 32, 32), num_classes=10)
def plain110(num_classes: int, in_chans: int, **options: Any) -> CifarResNet:
    """Plain-110: ResNet-110 without shortcuts (He et al. 2015, sec. 4.2)."""
    return _plain(110, num_classes, in_chans, **options)
