"""``--data``: the built-in ``shapes`` or a COCO-format folder, as train/val/test splits."""

from __future__ import annotations

import numpy as np

from resnetlab.data.splits import split_indices
from resnetlab.detection.coco import read_coco
from resnetlab.detection.config import SHAPES
from resnetlab.detection.data import DetectionSet
from resnetlab.detection.shapes import SPLITS, ShapesSet

SPLIT_NAMES = ("train", "val", "test")


def load_splits(
    data: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit: int | None = None,
) -> dict[str, DetectionSet]:
    """``{"train", "val", "test"}``: shapes' own splits, or a COCO folder's images split at
    random by ``seed`` (images, not boxes). ``limit`` keeps the first images of each split."""
    if data == SHAPES:
        return {
            name: ShapesSet(name, size=min(limit or SPLITS[name], SPLITS[name]))
            for name in SPLIT_NAMES
        }
    images = read_coco(data)
    split = split_indices(
        np.zeros(len(images), dtype=np.int64),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    return {
        name: images.subset(indices[:limit].tolist())
        for name, indices in zip(SPLIT_NAMES, (split.train, split.val, split.test), strict=True)
    }
