"""Augmentation of whole batches on the training device (CPU or GPU), without a loop per image.

Batches come straight from the decode-once cache as uint8 (N, C, H, W). ``BatchAugment`` turns
them into normalised float tensors with the CIFAR recipe of He et al. 2015 (sec. 4.2: pad 4
pixels, take a random 32x32 crop, flip horizontally at random), optionally the derandomised
"alternating flip" of Jordan 2024 (arXiv:2404.00498) and Cutout (DeVries & Taylor 2017). All
random numbers come from the object's own CPU generator, so a run is reproducible from its seed
on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_PADDING_MODES = {"zeros": "constant", "reflect": "reflect"}


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for a uint8 (or [0, 1] float) batch (N, C, H, W)."""
    x = to_unit_float(x)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _hash_bits(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """One pseudo-random bit per sample index, fixed for a seed (a 32-bit integer hash)."""
    h = (indices.long().cpu() ^ seed) & 0xFFFFFFFF
    for _ in range(2):
        h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    return ((h >> 16) ^ h) & 1


class BatchAugment:
    """Random crop (padding + shift), horizontal flip, normalisation and Cutout for a batch.

    ``aug(x, indices, epoch)`` takes uint8 (or [0, 1] float) images (N, C, H, W) and returns
    normalised float32 images of the same shape. Order: crop with ``crop_padding`` pixels of
    zero (black) or reflected padding, flip, normalise with ``mean``/``std``, then Cutout,
    which zeroes a ``cutout x cutout`` square centred anywhere in the image (it may be clipped
    at the border) after normalisation, i.e. fills it with the mean colour, as DeVries &
    Taylor 2017 did.

    ``flip_alternate`` replaces the coin toss per image by alternation (Jordan 2024): each image
    is flipped in every other epoch, starting from a pseudo-random choice fixed by its dataset
    index (``indices``, required then) and the seed. It implies ``flip``.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 4,
        padding_mode: str = "zeros",
        flip: bool = True,
        flip_alternate: bool = False,
        cutout: int = 0,
        seed: int = 0,
    ) -> None:
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        if crop_padding < 0 or cutout < 0:
            raise ValueError("crop_padding and cutout must not be negative")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.flip = flip or flip_alternate
        self.flip_alternate = flip_alternate
        self.cutout = cutout
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, x: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0
    ) -> torch.Tensor:
        """Augment and normalise a batch; the samples' dataset ``indices`` are only used by
        ``flip_alternate``."""
        x = to_unit_float(x)
        if self.crop_padding:
            x = self._crop(x)
        if self.flip:
            x = self._flip(x, epoch, indices)
        x = normalize_batch(x, self.mean, self.std)
        return self._cutout(x) if self.cutout else x

    def _randint(self, high: int, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator).to(device)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """Pad by ``crop_padding`` and gather one randomly shifted H x W window per image."""
        n, _, height, width = x.shape
        pad, device = self.crop_padding, x.device
        padded = F.pad(x, (pad, pad, pad, pad), mode=_PADDING_MODES[self.padding_mode])
        rows = self._randint(2 * pad + 1, n, device)[:, None] + torch.arange(height, device=device)
        cols = self._randint(2 * pad + 1, n, device)[:, None] + torch.arange(width, device=device)
        batch = torch.arange(n, device=x.device)[:, None, None]
        # advanced indices around a slice put the channel last: (N, H, W, C) -> (N, C, H, W)
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _flip(self, x: torch.Tensor, epoch: int, indices: torch.Tensor | None) -> torch.Tensor:
        """Mirror the chosen images left-right."""
        n = x.shape[0]
        if self.flip_alternate:
            if indices is None:
                raise ValueError("flip_alternate needs the samples' dataset indices")
            chosen = (_hash_bits(indices, self.seed) + epoch) % 2 == 1
        else:
            chosen = torch.rand(n, generator=self.generator) < 0.5
        return torch.where(chosen.to(x.device)[:, None, None, None], x.flip(3), x)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Zero a ``cutout``-sided square per image, centred on a uniformly drawn pixel."""
        n, _, height, width = x.shape
        top = self._randint(height, n, x.device) - self.cutout // 2
        left = self._randint(width, n, x.device) - self.cutout // 2
        rows = torch.arange(height, device=x.device) - top[:, None]
        cols = torch.arange(width, device=x.device) - left[:, None]
        in_rows = (rows >= 0) & (rows < self.cutout)
        in_cols = (cols >= 0) & (cols < self.cutout)
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
        return x.masked_fill(mask, 0.0)
