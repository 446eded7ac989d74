"""1-D ResNet for time series (Wang et al. 2017, "Time Series Classification from Scratch with
Deep Neural Networks: A Strong Baseline", sec. 2.3)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.models.blocks import init_weights
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.registry import register_model

_KERNELS = (8, 5, 3)
_WIDTHS = (64, 128, 128)


class SameConv1d(nn.Conv1d):
    """Stride-1 conv1d with 'same' padding, the extra zero of an even kernel on the right (as
    Keras), and no bias (a BatchNorm follows it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=False)
        self.pad_left = (kernel_size - 1) // 2
        self.pad_right = kernel_size - 1 - self.pad_left

    def forward(self, x: Tensor) -> Tensor:
        """Pad the time axis, then convolve: the length is kept."""
        return super().forward(F.pad(x, (self.pad_left, self.pad_right)))


class Residual1dBlock(nn.Module):
    """Three conv-BN layers (kernels 8, 5, 3; ReLU after the first two), then
    y = relu(F(x) + shortcut(x)); the shortcut is 1x1 conv + BN where channels change, else BN.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = SameConv1d(in_channels, out_channels, _KERNELS[0])
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = SameConv1d(out_channels, out_channels, _KERNELS[1])
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv3 = SameConv1d(out_channels, out_channels, _KERNELS[2])
        self.bn3 = nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.BatchNorm1d(out_channels)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                SameConv1d(in_channels, out_channels, 1), nn.BatchNorm1d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (N, C, L)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet1d(ClassifierMixin, nn.Module):
    """Three residual blocks of 64/128/128 filters, global average pooling over time, ``fc``.

    The input is (N, in_chans, L): one channel per series variable, any length L.
    """

    kaiming_linear = True

    def __init__(self, num_classes: int = 2, in_chans: int = 1) -> None:
        super().__init__()
        self.layer1 = Residual1dBlock(in_chans, _WIDTHS[0])
        self.layer2 = Residual1dBlock(_WIDTHS[0], _WIDTHS[1])
        self.layer3 = Residual1dBlock(_WIDTHS[1], _WIDTHS[2])
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(_WIDTHS[2], num_classes)
        init_weights(self, linear=self.kaiming_linear)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: (N, 128, L)."""
        return self.layer3(self.layer2(self.layer1(x)))


@register_model("resnet1d", family="sequence", input_shape=(1, 128), num_classes=2)
def resnet1d(num_classes: int, in_chans: int, **options: Any) -> ResNet1d:
    """The time-series ResNet of Wang et al. 2017 (fig. 1c)."""
    return ResNet1d(num_classes, in_chans, **options)
