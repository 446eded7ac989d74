"""The classifier of every network: timm's ``get_classifier``/``reset_classifier``, and the
key prefix of its tensors in a state dict."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from resnetlab.models.blocks import init_weights


class ClassifierMixin:
    """For a network whose classifier is the linear layer ``fc``; mix in before ``nn.Module``."""

    fc: nn.Linear
    # Whether the network's init gives linear layers Kaiming-normal weights and zero biases
    # (``init_weights(linear=True)``) rather than PyTorch's default.
    kaiming_linear: ClassVar[bool]

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
