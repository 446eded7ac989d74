"""The description of a dataset that every source hands to the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from resnetlab.data.splits import split_indices, split_subsets
from resnetlab.data.stats import dataset_mean_std, tensor_mean_std


@dataclass
class DataBundle:
    """Train/val/test splits plus what a model and a checkpoint need to know about them.

    Each split yields ``(x, y)``: ``x`` a tensor of ``input_shape``, not yet normalised (images
    as float32 in [0, 1] or, from the decode-once cache, uint8 in [0, 255]) and ``y`` an int
    class index. ``mean``/``std`` were computed on the
    training split, per channel for images and sequences and per feature for tables; the
    engine normalises batches with them and stores them in the checkpoint.
    """

    name: str
    kind: str  # "image", "sequence" or "tabular"
    classes: list[str]
    input_shape: tuple[int, ...]
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    mean: list[float]
    std: list[float]
    feature_names: list[str] = field(default_factory=list)  # tabular only: column order
    pipeline: str = "in-memory tensors"  # how samples are produced, printed at the start of a run
    split_record: dict[str, Any] | None = None  # image folders, tables: ``splits.record_split``
    task: str = "classification"  # or "regression": y is then the standardised target (float)
    table: dict[str, Any] | None = None  # tables read from files: see ``data.preprocess``
    class_counts: list[int] | None = None  # training samples per class (class weights)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def target_scale(self) -> tuple[float, float]:
        """Regression: the ``(mean, std)`` that standardised the target (``y`` is in units
        of ``std`` from ``mean``)."""
        assert self.table is not None and self.task == "regression"
        return self.table["target_mean"], self.table["target_std"]


class MappedDataset(Dataset):
    """``(transform(x), y)`` for each ``(x, y)`` of ``base``, computed when an item is read."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        return self.transform(x), y


def dataset_tensors(dataset: Dataset, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(x, y)`` of ``dataset`` stacked into two tensors, read once."""
    batches = list(DataLoader(dataset, batch_size=1024, num_workers=workers))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def bundle_from_tensors(
    name: str,
    kind: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    feature_names: list[str] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataBundle:
    """Split in-memory samples ``x`` (float32) and labels ``y`` (int64) into a DataBundle.

    The splits are seeded and stratified (``split_indices``); mean/std come from the training
    split only. ``transform`` (e.g. a resize) is applied per item when read, and the
    statistics are then taken from transformed training items.
    """
    split = split_indices(
        y.numpy(),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        class_names=classes,
    )
    dataset: Dataset = TensorDataset(x, y)
    if transform is not None:
        dataset = MappedDataset(dataset, transform)
    train, val, test = split_subsets(dataset, split)
    if transform is None:
        mean, std = tensor_mean_std(x[split.train])
    else:
        mean, std = dataset_mean_std(train, seed=seed)
    return DataBundle(
        name,
        kind,
        classes,
        tuple(train[0][0].shape),
        train,
        val,
        test,
        mean,
        std,
        feature_names or [],
        class_counts=torch.bincount(y[split.train], minlength=len(classes)).tolist(),
    )
