"""Layers with explicit forward and backward passes.

Every layer caches what its backward pass needs during `forward` and, given
the upstream gradient dL/d(output), `backward` returns dL/d(input) and stores
the gradients of its own parameters in `self.grads` (overwritten, not summed:
each parameter is used once per forward pass, so there is nothing to zero).
Shapes follow PyTorch: a batch is (N, features), a weight is (out, in).
"""

import numpy as np
from numpy.typing import DTypeLike


def he_normal(fan_in: int, fan_out: int, rng: np.random.Generator, dtype: DTypeLike) -> np.ndarray:
    """Draw a (fan_out, fan_in) weight from N(0, 2 / fan_in).

    He et al. 2015b ("Delving Deep into Rectifiers", sec. 2.2): this variance keeps the
    activations' scale constant through ReLU layers.
    """
    return (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(dtype)


class Linear:
    """Affine map z = x W^T + b, with W of shape (out, in) as in `torch.nn.Linear`.

    Backward, for a batch x of shape (N, in) and upstream g = dL/dz of shape (N, out):
        dL/dW = g^T x        (out, in)
        dL/db = sum_n g_n    (out,)
        dL/dx = g W          (N, in)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rng: np.random.Generator,
        dtype: DTypeLike = np.float64,
        bias: bool = True,
    ) -> None:
        weight = he_normal(in_features, out_features, rng, dtype)
        self.params: dict[str, np.ndarray] = {"weight": weight}
        if bias:
            self.params["bias"] = np.zeros(out_features, dtype=dtype)
        self.grads: dict[str, np.ndarray] = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Return x W^T + b and remember x for the backward pass."""
        self._x = x
        z = x @ self.params["weight"].T
        if "bias" in self.params:
            z = z + self.params["bias"]
        return z

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Store dL/dW (and dL/db) and return dL/dx."""
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        self.grads["weight"][...] = grad_out.T @ self._x
        if "bias" in self.params:
            self.grads["bias"][...] = grad_out.sum(axis=0)
        return grad_out @ self.params["weight"]


class ReLU:
    """Rectifier a = max(z, 0); its derivative is 1 where z > 0, else 0 (0 at z = 0, as torch)."""

    def __init__(self) -> None:
        self._active: np.ndarray | None = None

    def forward(self, z: np.ndarray) -> np.ndarray:
        """Return max(z, 0) and remember where z was positive."""
        self._active = z > 0
        return np.maximum(z, 0)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Pass the gradient through where the input was positive, block it elsewhere."""
        if self._active is None:
            raise RuntimeError("ReLU.backward called before forward")
        return grad_out * self._active


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax, stable for large logits: z - max(z) - log sum exp(z - max(z))."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    L = -1/N sum_i log softmax(z_i)[y_i]. With p_i = softmax(z_i) and e_{y_i} the
    one-hot label, the gradient is dL/dz_i = (p_i - e_{y_i}) / N: fusing softmax and
    log-likelihood avoids ever dividing by a tiny probability.
    """

    def __init__(self) -> None:
        self._probs: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """Return the mean loss over the batch; `labels` are class indices in [0, C)."""
        log_probs = log_softmax(logits)
        self._probs = np.exp(log_probs)
        self._labels = labels
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    def backward(self) -> np.ndarray:
        """Return dL/dlogits = (softmax(z) - onehot(y)) / N."""
        if self._probs is None or self._labels is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        grad = self._probs.copy()
        grad[np.arange(len(self._labels)), self._labels] -= 1.0
        return grad / len(self._labels)
