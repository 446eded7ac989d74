"""Input checks shared by the scratch network and its training loop."""

import numpy as np

from resnetlab.errors import ResnetlabError


class ScratchInputError(ResnetlabError, ValueError):
    """Bad input to the NumPy network: a wrong shape, a label out of range, a bad setting.

    It is a `ValueError` (plain NumPy code expects one) and a `ResnetlabError`
    (the CLI prints it as a one-line message).
    """


def check_features(x: np.ndarray, in_features: int, dtype: np.dtype) -> np.ndarray:
    """Return `x` as a 2-D array of `dtype`, or raise if it is not (N, in_features)."""
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ScratchInputError(f"inputs: expected shape (N, {in_features}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ScratchInputError("inputs: contain NaN or infinity")
    return x


def check_labels(y: np.ndarray, num_samples: int, num_classes: int) -> np.ndarray:
    """Return `y` as a 1-D integer array of `num_samples` class indices in [0, num_classes)."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ScratchInputError(f"labels: expected shape ({num_samples},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ScratchInputError(f"labels: expected integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0]
        raise ScratchInputError(f"labels: label {bad} out of range [0, {num_classes})")
    return y.astype(np.int64, copy=False)


def check_positive(name: str, value: float) -> None:
    """Raise unless the setting `name` is strictly positive."""
    if not value > 0:
        raise ScratchInputError(f"{name}: must be > 0, got {value}")


def check_non_negative(name: str, value: float) -> None:
    """Raise unless the setting `name` is zero or positive."""
    if not value >= 0:
        raise ScratchInputError(f"{name}: must be >= 0, got {value}")
