"""Augmentation of whole batches on the training device (CPU or GPU), without a loop per image.

Batches come straight from the decode-once cache as uint8 (N, C, H, W). ``BatchAugment`` turns
them into normalised float tensors with the CIFAR recipe of He et al. 2015 (sec. 4.2: pad 4
pixels, take a random 32x32 crop, flip horizontally at random), optionally the derandomised
"alternating flip" of Jordan 2024 (arXiv:2404.00498) and Cutout (DeVries & Taylor 2017). Every
random number is a function of (seed, epoch, sample index) (``data.seeds``): a run is
reproducible from its seed on any device, and resumes exactly at any step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resnetlab.data.seeds import derive_seed, sample_hash

_PADDING_MODES = {"zeros": "constant", "reflect": "reflect"}


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for a uint8 (or [0, 1] float) batch (N, C, ...)."""
    x = to_unit_float(x)
    view = (1, -1, *[1] * (x.ndim - 2))
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(view)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(view)
    return (x - mean) / std


_CROP_ROW, _CROP_COL, _FLIP, _FLIP_START, _CUTOUT_ROW, _CUTOUT_COL = range(6)  # streams


class _Draws:
    """Random integers for the samples of one batch, each a function of (seed, epoch, sample
    index, stream): the same sample gets the same numbers in any batch, on any resume."""

    def __init__(self, indices: torch.Tensor, seed: int, epoch: int):
        self.indices, self.seed, self.epoch = indices, seed, epoch

    def ints(self, stream: int, high: int) -> torch.Tensor:
        """One integer in ``[0, high)`` per sample, for this epoch."""
        return sample_hash(self.indices, derive_seed(self.seed, self.epoch, stream)) % high

    def fixed_ints(self, stream: int, high: int) -> torch.Tensor:
        """One integer in ``[0, high)`` per sample, the same in every epoch."""
        return sample_hash(self.indices, derive_seed(self.seed, stream)) % high


class AugmentDraws(NamedTuple):
    """A batch's random numbers, one per sample (None where that augmentation is off): the
    crop's top-left corner in the padded image, whether to flip, and Cutout's top-left
    corner (which may lie outside the image)."""

    crop_top: torch.Tensor | None
    crop_left: torch.Tensor | None
    flip: torch.Tensor | None
    cutout_top: torch.Tensor | None
    cutout_left: torch.Tensor | None


class BatchAugment:
    """Random crop (padding + shift), horizontal flip, normalisation and Cutout for a batch.

    ``aug(x, indices, epoch)`` takes uint8 (or [0, 1] float) images (N, C, H, W), or clips
    (N, C, T, H, W), and returns normalised float32 ones of the same shape. A clip is augmented
    as a whole: every frame gets its clip's crop, flip and Cutout square.

    Order: crop with ``crop_padding`` pixels of zero (black) or reflected padding, flip,
    normalise with ``mean``/``std``, then Cutout, which zeroes a ``cutout x cutout`` square
    centred anywhere in the image (it may be clipped at the border) after normalisation, i.e.
    fills it with the mean colour, as DeVries & Taylor 2017 did. It is a ``Transform`` of the
    training step: ``draw`` makes the random numbers where the indices are (the host, or the
    GPU that holds the data), ``apply`` is tensor operations only (and compiles).

    ``flip_alternate`` replaces the coin toss per image by alternation (Jordan 2024): each image
    is flipped in every other epoch, starting from a pseudo-random choice fixed by its dataset
    index and the seed. It implies ``flip``.
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

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """Augment and normalise a batch of the samples at dataset positions ``indices``."""
        return self.apply(x, self.draw(indices, epoch, x.shape))

    def draw(self, indices: torch.Tensor, epoch: int, shape: torch.Size) -> AugmentDraws:
        """The random numbers for a batch of ``shape`` (N, C, H, W) of the samples
        ``indices`` in ``epoch``, on the indices' device."""
        draw = _Draws(indices, self.seed, epoch)
        height, width = shape[-2:]
        crop = 2 * self.crop_padding + 1
        if self.flip_alternate:
            flip = (draw.fixed_ints(_FLIP_START, 2) + epoch) % 2 == 1
        else:
            flip = draw.ints(_FLIP, 2) == 1
        return AugmentDraws(
            draw.ints(_CROP_ROW, crop) if self.crop_padding else None,
            draw.ints(_CROP_COL, crop) if self.crop_padding else None,
            flip if self.flip else None,
            draw.ints(_CUTOUT_ROW, height) - self.cutout // 2 if self.cutout else None,
            draw.ints(_CUTOUT_COL, width) - self.cutout // 2 if self.cutout else None,
        )

    def apply(self, x: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
        """The augmented, normalised batch, given ``draw``'s numbers; a clip (N, C, T, H, W)
        gets the same crop, flip and Cutout in every frame. Crop and flip are one gather, done
        before the conversion to float (on uint8 images, a quarter of the bytes)."""
        draws = AugmentDraws(*(d if d is None else d.to(x.device) for d in draws))
        shape = x.shape
        x = x.flatten(1, -3)  # a clip's frames as channels: (N, C*T, H, W)
        if draws.flip is not None or draws.crop_top is not None:
            x = self._crop_and_flip(x, draws)
        x = normalize_batch(x.reshape(shape), self.mean, self.std).flatten(1, -3)
        if draws.cutout_top is not None and draws.cutout_left is not None:
            x = self._cutout(x, draws.cutout_top, draws.cutout_left)
        return x.reshape(shape)

    def _crop_and_flip(self, x: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
        """One H x W window per image of the image padded by ``crop_padding``, at the drawn
        corner (the top-left one without padding), mirrored where drawn so."""
        n, _, height, width = x.shape
        device = x.device
        rows = torch.arange(height, device=device).expand(n, height)
        cols = torch.arange(width, device=device).expand(n, width)
        if draws.flip is not None:  # the window's column j is column W - 1 - j
            cols = torch.where(draws.flip[:, None], width - 1 - cols, cols)
        if draws.crop_top is not None and draws.crop_left is not None:
            pad = self.crop_padding
            x = F.pad(x, (pad, pad, pad, pad), mode=_PADDING_MODES[self.padding_mode])
            rows = rows + draws.crop_top[:, None]
            cols = cols + draws.crop_left[:, None]
        batch = torch.arange(n, device=device)[:, None, None]
        # advanced indices around a slice put the channel last: (N, H, W, C) -> (N, C, H, W)
        return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Zero a ``cutout``-sided square per image from (top, left), clipped at the border."""
        _, _, height, width = x.shape
        rows = torch.arange(height, device=x.device) - top[:, None]
        cols = torch.arange(width, device=x.device) - left[:, None]
        in_rows = (rows >= 0) & (rows < self.cutout)
        in_cols = (cols >= 0) & (cols < self.cutout)
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
        return x.masked_fill(mask, 0.0)
