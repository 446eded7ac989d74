"""Pre-activation ResNets for 32x32 inputs (He et al. 2016, "Identity Mappings in Deep ResNets")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from resnetlab.models.blocks import PreActBasicBlock, PreActBottleneck, conv3x3, init_weights
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.features import FeatureLevel
from resnetlab.models.registry import register_model


class PreActResNet(ClassifierMixin, nn.Module):
    """3x3 conv stem, stages of pre-activation blocks, final BN-ReLU, GAP, ``fc``.

    The first stage keeps the resolution, every later one halves it (stride 2 in its first
    block). The final BN-ReLU (``bn_final``) is needed because every block ends with a conv
    (He et al. 2016, sec. 4.1 and fig. 5).
    """

    kaiming_linear = True

    def __init__(
        self,
        block: type[PreActBasicBlock | PreActBottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        stem_width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chans, stem_width)
        # A stage's map is its raw sum; the last one's passes the final BN-ReLU, as in timm.
        self.feature_levels = [FeatureLevel(("conv1",), stem_width, 1)]
        in_channels = stem_width
        for index, (planes, num_blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = [block(in_channels, planes, stride)]
            in_channels = planes * block.expansion
            blocks += [block(in_channels, planes) for _ in range(1, num_blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            last = index == len(layers) - 1
            modules = (f"layer{index + 1}", *(("bn_final", "relu") if last else ()))
            self.feature_levels.append(FeatureLevel(modules, in_channels, 2**index))
        self.num_stages = len(layers)
        self.bn_final = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self, linear=self.kaiming_linear)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after the final BN-ReLU, before pooling."""
        x = self.conv1(x)
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.relu(self.bn_final(x))


@register_model("preact_resnet110", family="preact", input_shape=(3, 32, 32), num_classes=10)
def preact_resnet110(num_classes: int, in_chans: int, **options: Any) -> PreActResNet:
    """Pre-act ResNet-110: 6n+2 layers, n=18, basic blocks (He et al. 2016, Table 2)."""
    return PreActResNet(
        PreActBasicBlock, (18, 18, 18), (16, 32, 64), num_classes, in_chans, **options
    )


@register_model("preact_resnet164", family="preact", input_shape=(3, 32, 32), num_classes=10)
def preact_resnet164(num_classes: int, in_chans: int, **options: Any) -> PreActResNet:
    """Pre-act ResNet-164: 9n+2 layers, n=18, bottleneck outputs 64/128/256 (He et al. 2016)."""
    return PreActResNet(
        PreActBottleneck, (18, 18, 18), (16, 32, 64), num_classes, in_chans, **options
    )


@register_model("preact_resnet18", family="preact", input_shape=(3, 32, 32), num_classes=10)
def preact_resnet18(num_classes: int, in_chans: int, **options: Any) -> PreActResNet:
    """The common CIFAR pre-act ResNet-18: 3x3 stem 64, stages 64/128/256/512 of 2 blocks."""
    return PreActResNet(
        PreActBasicBlock,
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        num_classes,
        in_chans,
        stem_width=64,
        **options,
    )
