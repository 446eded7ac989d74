"""Stochastic gradient descent with momentum and L2 weight decay."""

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from resnetlab.scratch.validation import check_non_negative, check_positive


class HasParameters(Protocol):
    """Anything that yields named parameters and their gradients in matching order."""

    def params(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, parameter array)."""
        ...

    def grads(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, gradient array)."""
        ...


class SGD:
    """SGD with momentum and weight decay, with the semantics of `torch.optim.SGD`.

    For each parameter w with gradient g (dampening 0, no Nesterov):
        g <- g + weight_decay * w        (L2 penalty weight_decay/2 * ||w||^2)
        v <- momentum * v + g            (v starts at 0, so v = g after step one)
        w <- w - lr * v
    He et al. 2015, sec. 3.4 train with momentum 0.9 and weight decay 1e-4.
    """

    def __init__(
        self, model: HasParameters, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        check_positive("lr", lr)
        check_non_negative("momentum", momentum)
        check_non_negative("weight_decay", weight_decay)
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity: dict[str, np.ndarray] = {}

    def step(self) -> None:
        """Update every parameter of the model in place from its current gradient."""
        named = zip(self.model.params(), self.model.grads(), strict=True)
        for (name, weight), (_, grad) in named:
            step = grad + self.weight_decay * weight
            if self.momentum:
                if name in self.velocity:
                    step = self.velocity[name] * self.momentum + step
                self.velocity[name] = step
            weight -= self.lr * step
