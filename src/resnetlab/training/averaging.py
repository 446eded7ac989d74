"""Weight averaging: an exponential moving average (EMA) of a run's weights, kept by
``torch.optim.swa_utils.AveragedModel``, which a run evaluates and checkpoints in place of the
weights it trains. Averaged weights do not match the BatchNorm statistics gathered along the
way, so they are recomputed for them (``swa_utils.update_bn``) before each evaluation."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from resnetlab.runtime.precision import Precision

# Training images whose statistics replace an averaged model's BatchNorm running statistics:
# enough for a mean and variance per channel, a few percent of a CIFAR epoch's cost.
BN_SAMPLES = 4096


class WeightAverage:
    """The EMA ``decay * average + (1 - decay) * weights`` of ``model``'s parameters, updated
    after each optimiser step (the first update copies the weights)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @property
    def module(self) -> nn.Module:
        """The averaged network, of the model's class."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current parameters."""
        self.averaged.update_parameters(model)

    def recompute_batchnorm(
        self, batches: Iterable[torch.Tensor], precision: Precision, keep: Collection[str] = ()
    ) -> None:
        """Replace the averaged network's BatchNorm running statistics by those of
        ``batches`` (model inputs), averaged over all of them; the layers named in ``keep``
        (whose statistics the training keeps fixed, e.g. a linear probe's) keep theirs."""
        modules = dict(self.module.named_modules())
        kept = {name: copy.deepcopy(modules[name].state_dict()) for name in keep}
        with precision.autocast():
            update_bn(batches, self.module)
        for name, state in kept.items():
            modules[name].load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights, BatchNorm statistics and update count."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``."""
        self.averaged.load_state_dict(state)
