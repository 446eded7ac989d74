"""The residual block and the residual MLP, with hand-written backward passes."""

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import DTypeLike

from resnetlab.scratch.layers import Linear, ReLU
from resnetlab.scratch.validation import ScratchInputError, check_features


class ResidualBlock:
    """y = F(x) + x, or y = F(x) + W_s x when the width changes, with F = Linear -> ReLU -> Linear.

    He et al. 2015, eq. 1 (identity shortcut) and eq. 2 (projection shortcut W_s, here a
    Linear without bias). The ReLU the paper puts after the addition is left out, so the
    shortcut is a clean identity (He et al. 2016, "Identity Mappings in Deep Residual
    Networks", sec. 4) and the block's gradient is exactly (ibid., sec. 2, eq. 5)

        dL/dx = dL/dy (I + dF/dx)          (identity shortcut)
        dL/dx = dL/dy (W_s + dF/dx)        (projection shortcut)

    The identity term carries dL/dy to x unchanged, however small dF/dx becomes: that
    is why gradients do not vanish in a deep stack of these blocks.
    """

    def __init__(
        self, in_features: int, out_features: int, rng: np.random.Generator, dtype: DTypeLike
    ) -> None:
        self.fc1 = Linear(in_features, out_features, rng, dtype)
        self.relu = ReLU()
        self.fc2 = Linear(out_features, out_features, rng, dtype)
        self.shortcut = (
            Linear(in_features, out_features, rng, dtype, bias=False)
            if in_features != out_features
            else None
        )

    def named_linears(self) -> Iterator[tuple[str, Linear]]:
        """Yield the block's Linear layers with their names (fc1, fc2, shortcut)."""
        yield "fc1", self.fc1
        yield "fc2", self.fc2
        if self.shortcut is not None:
            yield "shortcut", self.shortcut

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Return F(x) + x (or F(x) + W_s x)."""
        residual = self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        return residual + skip

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Return dL/dx = dL/dy dF/dx + dL/dy (the identity) or + dL/dy W_s (the projection)."""
        through_residual = self.fc1.backward(self.relu.backward(self.fc2.backward(grad_out)))
        through_skip = grad_out if self.shortcut is None else self.shortcut.backward(grad_out)
        return through_residual + through_skip


class ResidualMLP:
    """Input Linear + ReLU, residual blocks, and a Linear head producing class logits.

    For `widths=(20, 40)` and `in_features=10` this is the network of the article's
    case study: 10 -> 20 (stem), 20 -> 20 (identity block), 20 -> 40 (projection block),
    40 -> num_classes (head). Each width gets `blocks_per_width` blocks; only the first
    one of a width can change the width, so only it may need a projection.
    Parameter names follow the equivalent PyTorch module: `stem.weight`,
    `blocks.1.shortcut.weight`, `head.bias`, ...
    """

    def __init__(
        self,
        widths: Sequence[int] = (20, 40),
        in_features: int = 10,
        num_classes: int = 2,
        blocks_per_width: int = 1,
        seed: int = 0,
        dtype: DTypeLike = np.float64,
    ) -> None:
        if not widths or min(widths) < 1 or in_features < 1 or num_classes < 1:
            raise ScratchInputError(
                f"ResidualMLP: widths, in_features and num_classes must be positive, got "
                f"widths={tuple(widths)}, in_features={in_features}, num_classes={num_classes}"
            )
        if blocks_per_width < 1:
            raise ScratchInputError(f"blocks_per_width: must be >= 1, got {blocks_per_width}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.stem = Linear(in_features, widths[0], rng, self.dtype)
        self.stem_relu = ReLU()
        self.blocks: list[ResidualBlock] = []
        width_in = widths[0]
        for width in widths:
            for _ in range(blocks_per_width):
                self.blocks.append(ResidualBlock(width_in, width, rng, self.dtype))
                width_in = width
        self.head = Linear(widths[-1], num_classes, rng, self.dtype)

    def named_linears(self) -> Iterator[tuple[str, Linear]]:
        """Yield every Linear layer with its dotted name, in forward order."""
        yield "stem", self.stem
        for index, block in enumerate(self.blocks):
            for name, layer in block.named_linears():
                yield f"blocks.{index}.{name}", layer
        yield "head", self.head

    def params(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, array) for every parameter; the arrays are live: writes edit the model."""
        for prefix, layer in self.named_linears():
            for key, value in layer.params.items():
                yield f"{prefix}.{key}", value

    def grads(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, gradient) in the order of `params()`, as left by the last `backward`."""
        for prefix, layer in self.named_linears():
            for key, value in layer.grads.items():
                yield f"{prefix}.{key}", value

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return a copy of every parameter, keyed by name (the PyTorch module's keys)."""
        return {name: value.copy() for name, value in self.params()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy `state` into the parameters; keys and shapes must match exactly."""
        own = dict(self.params())
        if set(state) != set(own):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ScratchInputError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, value in own.items():
            new = np.asarray(state[name])
            if new.shape != value.shape:
                raise ScratchInputError(
                    f"load_state_dict: {name} has shape {new.shape}, expected {value.shape}"
                )
            value[...] = new

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Return the logits (N, num_classes) for inputs x of shape (N, in_features)."""
        x = check_features(x, self.in_features, self.dtype)
        h = self.stem_relu.forward(self.stem.forward(x))
        for block in self.blocks:
            h = block.forward(h)
        return self.head.forward(h)

    def backward(self, grad_logits: np.ndarray) -> np.ndarray:
        """Fill every parameter's gradient from dL/dlogits and return dL/dx (N, in_features)."""
        grad = self.head.backward(np.asarray(grad_logits, dtype=self.dtype))
        for block in reversed(self.blocks):
            grad = block.backward(grad)
        return self.stem.backward(self.stem_relu.backward(grad))
