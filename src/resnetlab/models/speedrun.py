"""Speed-run networks: wide, shallow residual nets that reach high CIFAR-10 accuracy in little
compute (Page 2018, "How to train your ResNet"; Jordan 2024, arXiv:2404.00498, "94% on
CIFAR-10 in 3.29 seconds on a single GPU")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.models.blocks import init_weights
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.features import FeatureLevel
from resnetlab.models.registry import register_model

# Batch norm with fixed settings (Jordan 2024, sec. 3.2): a fast running average (PyTorch
# momentum 0.4; airbench's 0.6 in the other convention), eps 1e-12 and a frozen scale of 1,
# so only the shift trains (the scale of a conv followed by BN is redundant).
_BN_MOMENTUM, _BN_EPS = 0.4, 1e-12
_WHITEN_PATCH = 2  # Jordan 2024 sec. 3.3: a 2x2 whitening layer of 2 x 12 filters


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)
    bn.weight.requires_grad_(False)
    return bn


class SpeedrunBlock(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU (Page 2018's "layer": pooling right after the
    conv, so the BN and activation run on a quarter of the pixels), then a residual conv:
    ``y + GELU(BN(conv(y)))``. airbench's blocks have no shortcut and start their second conv
    near the identity (Dirac init) instead; the shortcut gives the same start, as in Page's
    residual layers, and keeps the network a ResNet."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)  # 31 -> 16 -> 8 -> 4: any size >= 2
        self.bn1 = _batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _batch_norm(out_channels)
        self.act = nn.GELU()  # Jordan 2024 sec. 3.1 (GELU over ReLU)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.pool(self.conv1(x))))
        return y + self.act(self.bn2(self.conv2(y)))


class SpeedrunNet(ClassifierMixin, nn.Module):
    """A 2x2 whitening conv (+ GELU), three ``SpeedrunBlock``s of ``widths`` channels, a
    global max-pool and a linear classifier whose input is scaled by ``head_scale``.

    - The stem is airbench's (Jordan 2024, sec. 3.3): a 2x2 conv without padding whose
      filters, set by ``whiten_(images)``, are the eigenvectors of the training patches'
      covariance scaled to unit variance, and their negatives; they stay frozen.
    - Three stages that each halve the resolution, with a global max-pool: Page 2018's
      ResNet-9 layout, airbench's depth (6 convs after the stem).
    - Global max-pooling and a scaled-down classifier input (Page 2018: x0.125; Jordan 2024:
      1/9) keep the initial logits small, which label smoothing then does not fight.
    - The default widths (32, 128, 128) are half of airbench94's (64, 256, 256): a quarter of
      its multiply-adds, chosen so that about 15 epochs fit in 20 minutes of a 2-core CPU
      (measured in the README's speed-run section).
    """

    kaiming_linear = False

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        widths: Sequence[int] = (32, 128, 128),
        head_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be 3 positive channel counts (got {list(widths)})")
        stem = 2 * in_chans * _WHITEN_PATCH**2
        self.whiten = nn.Conv2d(in_chans, stem, _WHITEN_PATCH, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        channels = [stem, *widths]
        self.layer1 = SpeedrunBlock(channels[0], channels[1])
        self.layer2 = SpeedrunBlock(channels[1], channels[2])
        self.layer3 = SpeedrunBlock(channels[2], channels[3])
        self.feature_levels = [
            FeatureLevel(("whiten", "act"), stem, 1),
            *(FeatureLevel((f"layer{i + 1}",), w, 2 ** (i + 1)) for i, w in enumerate(widths)),
        ]
        self.avgpool = nn.AdaptiveMaxPool2d(1)  # the name ClassifierMixin pools with
        self.head_scale = head_scale
        self.fc = nn.Linear(widths[-1], num_classes)
        for layer in (self.layer1, self.layer2, self.layer3):
            init_weights(layer, linear=False)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: (N, widths[-1], ~H/8, ~W/8)."""
        return self.layer3(self.layer2(self.layer1(self.act(self.whiten(x)))))

    def pool_features(self, x: Tensor) -> Tensor:
        """The global maximum of each channel, scaled by ``head_scale``."""
        return torch.flatten(self.avgpool(x), 1) * self.head_scale

    @torch.no_grad()
    def whiten_(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem's filters from normalised training images (N, C, H, W): for each
        eigenvector ``v`` (eigenvalue ``l``) of the covariance of their 2x2 patches, the
        filters ``v / sqrt(l + eps)`` and ``-v / sqrt(l + eps)`` (Jordan 2024, sec. 3.3)."""
        patches = images.float().unfold(2, _WHITEN_PATCH, 1).unfold(3, _WHITEN_PATCH, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.whiten.weight[0].numel())
        patches = patches - patches.mean(0)
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors / torch.sqrt(values + eps)).T.flip(0)  # largest variance first
        filters = filters.reshape(-1, *self.whiten.weight.shape[1:])
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight.contiguous(memory_format=torch.preserve_format))
        self.whiten.bias.zero_()


@register_model("speedrun", family="speedrun", input_shape=(3, 32, 32), num_classes=10)
def speedrun(num_classes: int, in_chans: int, **options: Any) -> SpeedrunNet:
    """The speed-run network at its default widths (32, 128, 128); ``widths=[64,256,256]`` is
    airbench94's size."""
    return SpeedrunNet(num_classes, in_chans, **options)
