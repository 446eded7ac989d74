"""Seeded, stratified train/val/test splits for data that comes without one."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset

from resnetlab.errors import ResnetlabError


@dataclass(frozen=True)
class SplitIndices:
    """Sorted, disjoint index arrays into one dataset; ``val``/``test`` None when not asked for."""

    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray | None


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise a ResnetlabError unless both fractions are in [0, 1) and leave room for training."""
    for flag, fraction in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ResnetlabError(f"{flag} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1:
        raise ResnetlabError(
            f"--val-fraction + --test-fraction must be below 1, got {val_fraction + test_fraction}"
        )


def split_indices(
    labels: Sequence[int] | np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> SplitIndices:
    """Split ``range(len(labels))`` into train/val/test, stratified by label and seeded.

    The test split is taken first, then val from the rest; each holds ``round(fraction * n)``
    samples (at least one when its fraction is above 0). Where a split cannot be stratified
    (a class with a single sample, or fewer samples in a split than classes) it is drawn at
    random instead, with a warning that names the reason: a tiny class should not stop a run.
    """
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    n = len(labels)
    n_test, n_val = _split_size(test_fraction, n), _split_size(val_fraction, n)
    if n - n_test - n_val < 1:
        raise ResnetlabError(
            f"--data: {n} samples are too few for --val-fraction {val_fraction} "
            f"and --test-fraction {test_fraction}"
        )
    names = class_names or [str(label) for label in range(int(labels.max(initial=0)) + 1)]
    rest, test = _take(np.arange(n), labels, n_test, seed, "test", names)
    train, val = _take(rest, labels, n_val, seed, "val", names)
    return SplitIndices(train, val, test)


def split_subsets(
    dataset: Dataset, split: SplitIndices
) -> tuple[Subset, Subset | None, Subset | None]:
    """Wrap ``dataset`` in one ``Subset`` per split (None where the split is None)."""

    def subset(indices: np.ndarray | None) -> Subset | None:
        return None if indices is None else Subset(dataset, indices.tolist())

    return Subset(dataset, split.train.tolist()), subset(split.val), subset(split.test)


def _split_size(fraction: float, n: int) -> int:
    """Samples in a split of ``fraction`` of ``n``: 0 for 0, else at least 1."""
    return max(1, round(fraction * n)) if fraction > 0 else 0


def _take(
    indices: np.ndarray, labels: np.ndarray, size: int, seed: int, split: str, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``size`` of ``indices`` (stratified when possible); return (kept, taken), sorted."""
    if size == 0:
        return indices, None
    y = labels[indices]
    try:
        kept, taken = train_test_split(indices, test_size=size, random_state=seed, stratify=y)
    except ValueError:
        reason = _unstratifiable_reason(y, size, names)
        warnings.warn(
            f"cannot stratify the {split} split ({reason}); drawing it at random", stacklevel=3
        )
        kept, taken = train_test_split(indices, test_size=size, random_state=seed)
    return np.sort(kept), np.sort(taken)


def _unstratifiable_reason(y: np.ndarray, size: int, names: Sequence[str]) -> str:
    """Say why ``y`` cannot be split into ``size`` and ``len(y) - size`` by class."""
    values, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        return f"class {names[values[counts.argmin()]]!r} has only 1 sample"
    return f"{len(values)} classes do not fit into {min(size, len(y) - size)} samples"
