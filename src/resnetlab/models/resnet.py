"""ImageNet ResNets (He et al. 2015, Table 1), ResNeXt and Wide ResNet, with torchvision's keys."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from resnetlab.errors import ResnetlabError
from resnetlab.models.blocks import (
    BasicBlock,
    Bottleneck,
    init_weights,
    projection,
    zero_init_last_bn,
)
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.features import FeatureLevel
from resnetlab.models.registry import register_model

_WIDTHS = (64, 128, 256, 512)


class ResNet(ClassifierMixin, nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four stages of residual blocks, global average pool, ``fc``.

    ``replace_stride_with_dilation`` trades the stride of stages 2-4 for dilation (output
    stride 8 or 16, as in DeepLab); ``zero_init_residual`` zeroes each block's last BN gamma.
    """

    kaiming_linear = False  # linear layers keep PyTorch's default init

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        zero_init_residual: bool = False,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        dilate = tuple(replace_stride_with_dilation or (False, False, False))
        if len(dilate) != 3:
            raise ResnetlabError(
                f"replace_stride_with_dilation needs 3 booleans (stages 2-4), got {dilate}"
            )
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        make_block = partial(block, groups=groups, base_width=width_per_group)
        stages = []
        self.feature_levels = [FeatureLevel(("conv1", "bn1", "relu"), 64, 2)]
        in_channels, dilation, reduction = 64, 1, 4
        for planes, num_blocks, stride, dilated in zip(
            _WIDTHS, layers, (1, 2, 2, 2), (False, *dilate), strict=True
        ):
            first_dilation = dilation
            if dilated:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            out_channels = planes * block.expansion
            downsample = None
            if stride != 1 or in_channels != out_channels:
                downsample = projection(in_channels, out_channels, stride)
            blocks = [make_block(in_channels, planes, stride, downsample, dilation=first_dilation)]
            blocks += [
                make_block(out_channels, planes, dilation=dilation) for _ in range(1, num_blocks)
            ]
            stages.append(nn.Sequential(*blocks))
            name = f"layer{len(stages)}"
            modules = ("maxpool", name) if name == "layer1" else (name,)
            self.feature_levels.append(FeatureLevel(modules, out_channels, reduction))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self, linear=self.kaiming_linear)
        if zero_init_residual:
            zero_init_last_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: (N, 512 * expansion, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_model("resnet18", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnet18(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNet-18 (He et al. 2015, Table 1)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, **options)


@register_model("resnet34", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnet34(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNet-34 (He et al. 2015, Table 1)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, **options)


@register_model("resnet50", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnet50(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNet-50 (He et al. 2015, Table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, **options)


@register_model("resnet101", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnet101(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNet-101 (He et al. 2015, Table 1)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_chans, **options)


@register_model("resnet152", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnet152(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNet-152 (He et al. 2015, Table 1)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_chans, **options)


@register_model("resnext50_32x4d", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnext50_32x4d(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNeXt-50 32x4d: 32 groups of width 4 in the 3x3 convs (Xie et al. 2017, Table 1)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), num_classes, in_chans, groups=32, width_per_group=4, **options
    )


@register_model("resnext101_32x8d", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def resnext101_32x8d(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """ResNeXt-101 32x8d (Xie et al. 2017, sec. 5.1)."""
    return ResNet(
        Bottleneck, (3, 4, 23, 3), num_classes, in_chans, groups=32, width_per_group=8, **options
    )


@register_model("wide_resnet50_2", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def wide_resnet50_2(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """Wide ResNet-50-2: bottleneck width doubled (Zagoruyko & Komodakis 2016, sec. 5)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, width_per_group=128, **options)


@register_model("wide_resnet101_2", family="imagenet", input_shape=(3, 224, 224), num_classes=1000)
def wide_resnet101_2(num_classes: int, in_chans: int, **options: Any) -> ResNet:
    """Wide ResNet-101-2: bottleneck width doubled (Zagoruyko & Komodakis 2016, sec. 5)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_chans, width_per_group=128, **options)
