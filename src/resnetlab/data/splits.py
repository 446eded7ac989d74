"""Seeded, stratified train/val/test splits for data that comes without one."""

from __future__ import annotations

import base64
import hashlib
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def record_split(names: Sequence[str], split: SplitIndices) -> dict[str, Any]:
    """The split of a sample list as a checkpoint records it: the held-out indices into
    ``names`` (the folder's sorted file list), a sha256 of that list, and an 8-byte id per
    name, so that a folder changed since training can still be matched file by file."""
    return {
        "files": len(names),
        "sha256": _list_digest(names),
        "ids": pack_ints(_name_ids(names)),
        "val": None if split.val is None else pack_ints(split.val.astype(np.int64)),
        "test": None if split.test is None else pack_ints(split.test.astype(np.int64)),
    }


def restore_split(
    record: dict[str, Any],
    names: Sequence[str],
    source: str,
    *,
    kind: str = "folder",
    unit: str = "files",
) -> SplitIndices:
    """The recorded split (``record_split``) applied to today's ``names`` (of the ``unit``
    of a ``kind``). An unchanged list gets the recorded indices. If the list has changed,
    held-out ones are found again by their ids, ones that are gone are dropped, new ones count
    as training data, and a warning says how many were added and removed.

    Names that repeat (a table's duplicate rows, which share one id) follow one rule in a
    changed list: every copy of a name recorded in validation is a validation row, every copy
    of one recorded in test (and not in validation) a test row, so that a held-out row is never
    also a training row or a row of the other held-out split."""
    held_out = {key: unpack_ints(record[key], np.int64) for key in ("val", "test") if record[key]}
    if record["sha256"] != _list_digest(names):
        old_ids, new_ids = unpack_ints(record["ids"], np.uint64), _name_ids(names)
        claimed = np.zeros(len(names), dtype=bool)
        for key in ("val", "test"):  # validation first: it keeps a name recorded in both
            if key in held_out:
                found = np.isin(new_ids, old_ids[held_out[key]]) & ~claimed
                held_out[key], claimed = np.flatnonzero(found), claimed | found
        before, now = Counter(old_ids.tolist()), Counter(new_ids.tolist())
        warnings.warn(
            f"{source}: the {kind} has changed since training ({(now - before).total()} {unit} "
            f"added, {(before - now).total()} removed); the recorded split is kept for the "
            f"{unit} that remain",
            stacklevel=2,
        )
    taken = np.concatenate([np.empty(0, dtype=np.int64), *held_out.values()])
    train = np.setdiff1d(np.arange(len(names), dtype=np.int64), taken)
    return SplitIndices(
        train, *(np.sort(held_out[key]) if key in held_out else None for key in ("val", "test"))
    )


def _list_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _name_ids(names: Sequence[str]) -> np.ndarray:
    """An 8-byte blake2b id per name."""
    digests = b"".join(hashlib.blake2b(n.encode(), digest_size=8).digest() for n in names)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def pack_ints(values: np.ndarray) -> str:
    """An integer array as compressed little-endian bytes in base64 (compact in JSON)."""
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack_ints(text: str, dtype: type[np.integer]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(text))
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
