"""Normalisation statistics, always computed on the training split only."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

STD_FLOOR = 1e-6  # keeps constant features and blank channels from dividing by zero
MAX_STATS_ITEMS = 2000  # images decoded one by one: a seeded sample of this many is plenty


def tensor_mean_std(x: torch.Tensor, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Mean and std of a batch ``(N, C, ...)`` per channel (dim 1), over all other dims.

    For images that is per channel over all pixels; for tables ``(N, F)`` per feature. uint8
    pixels are taken as ``x / 255``. Summed in chunks of ``chunk`` samples (clips are large).
    The std is the population std, floored at ``STD_FLOOR``.
    """

    def channels(part: torch.Tensor) -> torch.Tensor:  # (C, everything else), float64
        return _unit_double(part).transpose(0, 1).reshape(x.shape[1], -1)

    count = x.numel() // max(x.shape[1], 1)
    mean = sum(channels(part).sum(1) for part in x.split(chunk)) / count
    squares = sum((channels(part) - mean[:, None]).square().sum(1) for part in x.split(chunk))
    std = (squares / count).sqrt().clamp_min(STD_FLOOR)
    return mean.tolist(), std.tolist()


def dataset_mean_std(
    dataset: Dataset, *, max_items: int | None = MAX_STATS_ITEMS, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a dataset of ``(x, y)`` with ``x`` of shape ``(C, ...)``.

    Reads every item, or a seeded sample of ``max_items`` of them; agrees with
    ``tensor_mean_std`` on the stacked items it read (uint8 pixels too, taken as ``x / 255``).
    """
    n = len(dataset)
    if max_items is not None and n > max_items:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    else:
        indices = np.arange(n)
    sums, square_sums, count = [], [], 0
    for index in indices.tolist():
        x = _unit_double(dataset[index][0]).flatten(1)
        sums.append(x.sum(1))
        square_sums.append(x.square().sum(1))
        count += x.shape[1]
    if not sums:
        raise ValueError("cannot compute statistics of an empty dataset")
    mean = torch.stack(sums).sum(0) / count
    variance = torch.stack(square_sums).sum(0) / count - mean.square()
    std = variance.clamp_min(0).sqrt().clamp_min(STD_FLOOR)
    return mean.tolist(), std.tolist()


def _unit_double(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64, uint8 pixels scaled to [0, 1]."""
    return x.double() / 255 if x.dtype == torch.uint8 else x.double()
