"""The head of every network, with timm's interface (``forward_features``, ``forward_head``,
``get_classifier``, ``reset_classifier``), and the key prefix of its tensors in a state dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from resnetlab.models.blocks import init_weights


class ClassifierMixin:
    """For a network whose classifier is the linear layer ``fc``; mix in before ``nn.Module``.

    The network defines ``forward_features`` (the last feature map) and an ``avgpool`` layer,
    or overrides ``pool_features``; ``forward`` is ``forward_head(forward_features(x))``.
    """

    fc: nn.Linear
    avgpool: nn.Module
    forward_features: Callable[[Tensor], Tensor]
    # Whether the network's init gives linear layers Kaiming-normal weights and zero biases
    # (``init_weights(linear=True)``) rather than PyTorch's default.
    kaiming_linear: ClassVar[bool]

    def pool_features(self, x: Tensor) -> Tensor:
        """Features ``(N, C)`` for the classifier: the feature map averaged over its positions."""
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Class logits ``(N, num_classes)`` from ``forward_features``' output; with
        ``pre_logits``, the pooled features the classifier reads."""
        x = self.pool_features(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The layer that maps features to class logits."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one for ``num_classes`` classes, on the same
        features, device and dtype, initialised as the network's own init does."""
        old = self.fc
        self.fc = nn.Linear(
            old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
        )
        init_weights(self.fc, linear=self.kaiming_linear)


def classifier_prefix(model: nn.Module) -> str:
    """The state-dict key prefix of ``model.get_classifier()``'s tensors, e.g. ``"fc."``."""
    head = model.get_classifier()
    return next(f"{name}." for name, module in model.named_modules() if module is head)
