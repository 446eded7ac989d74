"""Video ResNets of Tran et al. 2018 ("A Closer Look at Spatiotemporal Convolutions for Action
Recognition"): R3D, MC3 and R(2+1)D, with torchvision's keys, and small variants for a CPU.

Clips are (N, C, T, H, W). A network is a stem, four stages of basic blocks whose 3x3(x3)
convolutions are made by one of three builders, global average pooling over time and space,
and ``fc``. ``fr2d_10_small`` is the paper's f-R2D: 2-D convolutions on each frame (temporal
kernel and stride 1 everywhere), pooled over time only at the end; since ``fc`` is linear, its
logits are the average of the per-frame logits of a 2-D ResNet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from resnetlab.models.blocks import _PostActBlock, init_weights, zero_init_last_bn
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.registry import register_model

Stride3d = tuple[int, int, int]


def midplanes(in_planes: int, planes: int) -> int:
    """Channels between the spatial and the temporal convolution of a (2+1)-D block: as many
    parameters as a full 3x3x3 convolution (Tran et al. 2018, sec. 3.5)."""
    return (in_planes * planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * planes)


class Conv3DSimple(nn.Conv3d):
    """A full 3x3x3 convolution (R3D)."""

    def __init__(self, in_planes: int, out_planes: int, mid: int, stride: int = 1) -> None:
        super().__init__(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)

    @staticmethod
    def downsample_stride(stride: int) -> Stride3d:
        """Stride of the 1x1x1 projection shortcut of a block with this ``stride``."""
        return stride, stride, stride


class Conv3DNoTemporal(nn.Conv3d):
    """A 1x3x3 convolution: 2-D on each frame (MC3's upper stages, f-R2D)."""

    def __init__(self, in_planes: int, out_planes: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            in_planes, out_planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
            bias=False,
        )  # fmt: skip

    @staticmethod
    def downsample_stride(stride: int) -> Stride3d:
        """Stride of the 1x1x1 projection shortcut: time is never subsampled."""
        return 1, stride, stride


class Conv2Plus1D(nn.Sequential):
    """A 1x3x3 spatial convolution to ``mid`` channels, BN, ReLU, then a 3x1x1 temporal one
    (R(2+1)D); the stride applies to space in the first and to time in the second."""

    def __init__(self, in_planes: int, out_planes: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(
                in_planes, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                bias=False,
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0),
                      bias=False),
        )  # fmt: skip

    @staticmethod
    def downsample_stride(stride: int) -> Stride3d:
        """Stride of the 1x1x1 projection shortcut of a block with this ``stride``."""
        return stride, stride, stride


ConvBuilder = type[Conv3DSimple | Conv3DNoTemporal | Conv2Plus1D]


class VideoBasicBlock(_PostActBlock):
    """Two convolutions of ``conv`` with BN: y = relu(F(x) + shortcut(x)); both use the
    ``midplanes`` of the block's input and output channels, as torchvision's do."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        conv: ConvBuilder,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__(residual=True)
        mid = midplanes(in_planes, planes)
        self.conv1 = nn.Sequential(
            conv(in_planes, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(conv(planes, planes, mid), nn.BatchNorm3d(planes))
        self.downsample = downsample

    def branch(self, x: Tensor) -> Tensor:
        """conv-BN-ReLU-conv-BN."""
        return self.conv2(self.conv1(x))

    @property
    def last_bn(self) -> nn.BatchNorm3d:
        """``conv2[1]``."""
        return self.conv2[1]


def basic_stem(in_chans: int, width: int) -> nn.Sequential:
    """3x7x7 convolution, stride 1x2x2, BN, ReLU (R3D, MC3)."""
    return nn.Sequential(
        nn.Conv3d(in_chans, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(in_chans: int, width: int) -> nn.Sequential:
    """1x7x7 convolution to 45 channels (for a width of 64, scaled with it), BN, ReLU, then a
    3x1x1 convolution, BN, ReLU (R(2+1)D)."""
    mid = 45 * width // 64
    return nn.Sequential(
        nn.Conv3d(in_chans, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def frame_stem(in_chans: int, width: int) -> nn.Sequential:
    """1x7x7 convolution, stride 1x2x2, BN, ReLU: a 2-D stem on each frame (f-R2D)."""
    return nn.Sequential(
        nn.Conv3d(in_chans, width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class VideoResNet(ClassifierMixin, nn.Module):
    """``stem``, four stages of ``VideoBasicBlock`` (stage i's convolutions made by
    ``convs[i]``, strides 1, 2, 2, 2), global average pooling over (T, H, W), ``fc``.

    Initialisation as torchvision's: Kaiming-normal convolutions (fan_out), BN gamma 1 and
    beta 0, ``fc`` normal with std 0.01; ``zero_init_residual`` zeroes each block's last BN
    gamma (Goyal et al. 2017).
    """

    kaiming_linear = False

    def __init__(
        self,
        stem: Callable[[int, int], nn.Module],
        convs: Sequence[ConvBuilder],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 400,
        in_chans: int = 3,
        *,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem(in_chans, widths[0])
        stages, in_planes = [], widths[0]
        for conv, planes, blocks, stride in zip(convs, widths, layers, (1, 2, 2, 2), strict=True):
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(
                        in_planes, planes, 1, stride=conv.downsample_stride(stride), bias=False
                    ),
                    nn.BatchNorm3d(planes),
                )
            stage = [VideoBasicBlock(in_planes, planes, conv, stride, downsample)]
            stage += [VideoBasicBlock(planes, planes, conv) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, linear=False)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:
            zero_init_last_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: (N, widths[-1], T', H', W')."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes) of clips (N, C, T, H, W)."""
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


_FULL = {"family": "video", "input_shape": (3, 16, 112, 112), "num_classes": 400}
_SMALL = {"family": "video", "input_shape": (3, 16, 64, 64), "num_classes": 10}
_SMALL_WIDTHS = (16, 32, 64, 128)
_3D, _2D, _2PLUS1D = Conv3DSimple, Conv3DNoTemporal, Conv2Plus1D


@register_model("r3d_18", **_FULL)
def r3d_18(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """R3D-18: 3x3x3 convolutions throughout (Tran et al. 2018, sec. 3.2)."""
    return VideoResNet(basic_stem, (_3D,) * 4, (2, 2, 2, 2), num_classes=num_classes,
                       in_chans=in_chans, **options)  # fmt: skip


@register_model("mc3_18", **_FULL)
def mc3_18(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """MC3-18: 3-D convolutions in the stem and first stage, 2-D above (sec. 3.3)."""
    return VideoResNet(basic_stem, (_3D, _2D, _2D, _2D), (2, 2, 2, 2), num_classes=num_classes,
                       in_chans=in_chans, **options)  # fmt: skip


@register_model("r2plus1d_18", **_FULL)
def r2plus1d_18(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """R(2+1)D-18: each 3x3x3 convolution split into 1x3x3 and 3x1x1 (sec. 3.5)."""
    return VideoResNet(r2plus1d_stem, (_2PLUS1D,) * 4, (2, 2, 2, 2), num_classes=num_classes,
                       in_chans=in_chans, **options)  # fmt: skip


@register_model("r3d_10_small", **_SMALL)
def r3d_10_small(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """R3D with one block per stage and 16/32/64/128 channels, for a CPU."""
    return VideoResNet(basic_stem, (_3D,) * 4, (1, 1, 1, 1), _SMALL_WIDTHS,
                       num_classes, in_chans, **options)  # fmt: skip


@register_model("mc3_10_small", **_SMALL)
def mc3_10_small(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """MC3 with one block per stage and 16/32/64/128 channels, for a CPU."""
    return VideoResNet(basic_stem, (_3D, _2D, _2D, _2D), (1, 1, 1, 1), _SMALL_WIDTHS,
                       num_classes, in_chans, **options)  # fmt: skip


@register_model("r2plus1d_10_small", **_SMALL)
def r2plus1d_10_small(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """R(2+1)D with one block per stage and 16/32/64/128 channels, for a CPU."""
    return VideoResNet(r2plus1d_stem, (_2PLUS1D,) * 4, (1, 1, 1, 1), _SMALL_WIDTHS,
                       num_classes, in_chans, **options)  # fmt: skip


@register_model("fr2d_10_small", **_SMALL)
def fr2d_10_small(num_classes: int, in_chans: int, **options: Any) -> VideoResNet:
    """f-R2D (sec. 3.1): a 2-D ResNet-10 (16/32/64/128 channels) on every frame, its logits
    averaged over time; it cannot see motion."""
    return VideoResNet(frame_stem, (_2D,) * 4, (1, 1, 1, 1), _SMALL_WIDTHS,
                       num_classes, in_chans, **options)  # fmt: skip
