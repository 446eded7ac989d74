"""NumPy arrays and tensors as images for a network of input shape (C, H, W): one rule reads
every layout, and pixels mean what they mean in torchvision (uint8 0..255, floats 0..1).

The layouts, in order of preference where several fit (an image C pixels wide): one image
before a batch, channels-first before channels-last; a 2-D array is one greyscale image, its
value in every channel (as a greyscale file is read for an RGB network). Images of another size
than H x W are cut and resized as files are (``decode.square_images``), except in the
(N, H, W) layout of a one-channel network, which only reads images of exactly H x W (so an RGB
image H x W x 3 is not taken for three narrow greyscale ones).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from resnetlab.data.augment import to_unit_float
from resnetlab.data.decode import square_images
from resnetlab.errors import ResnetlabError

# each layout names its axes; N, C, H and W that are absent have length 1
LAYOUTS = ("HW", "CHW", "HWC", "NHW", "NCHW", "NHWC")
PIXEL_RANGE = (-1.0, 2.0)  # float pixels beyond it are far from the [0, 1] of training


def image_batch(item: np.ndarray | Tensor, input_shape: Sequence[int], label: str) -> Tensor:
    """``item``, an image or a batch of them in any of ``LAYOUTS``, as a float batch
    (N, C, H, W) in [0, 1] at ``input_shape`` (C, H, W); a ``ResnetlabError`` naming ``label``
    if its dtype or shape fits no reading."""
    dtype = str(item.dtype).removeprefix("torch.")
    if dtype != "uint8" and not dtype.startswith(("float", "bfloat")):
        raise ResnetlabError(
            f"input {label}: {dtype} pixels; an image is uint8 (0..255) or float (0..1)"
        )
    pixels = torch.as_tensor(np.ascontiguousarray(item) if isinstance(item, np.ndarray) else item)
    pixels = pixels.detach().cpu()
    channels, height, width = input_shape
    layout = reading(tuple(pixels.shape), input_shape)
    if layout is None:
        accepted = ", ".join(_shape_text(name, input_shape) for name in _layouts(channels))
        raise ResnetlabError(
            f"input {label}: shape {tuple(pixels.shape)} is no image for this network, which "
            f"takes {accepted} (any H x W, resized to {height} x {width})"
        )
    batch = _as_nchw(pixels, layout).expand(-1, channels, -1, -1)
    batch = batch if batch.dtype == torch.uint8 else batch.float()
    if tuple(batch.shape[-2:]) != (height, width):
        batch = torch.from_numpy(square_images(batch.contiguous().numpy(), height))
    return to_unit_float(batch)


def reading(shape: tuple[int, ...], input_shape: Sequence[int]) -> str | None:
    """The first of ``LAYOUTS`` that an array of ``shape`` fits, or None."""
    channels, height, width = input_shape
    for layout in _layouts(channels):
        if len(layout) != len(shape):
            continue
        sizes = dict(zip(layout, shape, strict=True))
        if "C" in sizes and sizes["C"] != channels:
            continue
        if layout == "NHW" and (sizes["H"], sizes["W"]) != (height, width):
            continue
        return layout
    return None


def _layouts(channels: int) -> list[str]:
    """The layouts that a network of ``channels`` input channels reads."""
    return [layout for layout in LAYOUTS if layout != "NHW" or channels == 1]


def _shape_text(layout: str, input_shape: Sequence[int]) -> str:
    """A layout as the shape it accepts, e.g. ``(N, H, W, 3)``."""
    channels, height, width = input_shape
    fixed = {"C": channels, **({"H": height, "W": width} if layout == "NHW" else {})}
    return f"({', '.join(str(fixed.get(axis, axis)) for axis in layout)})"


def warn_out_of_range(images: Tensor, labels: Sequence[str]) -> None:
    """One warning if any of ``images`` (float, as ``image_batch`` returns them) has pixels far
    outside [0, 1]: floats of 0..255, or images already normalised."""
    low, high = PIXEL_RANGE
    flat = images.flatten(1)
    outside = ((flat.amin(1) < low) | (flat.amax(1) > high)).nonzero().flatten().tolist()
    if not outside:
        return
    first = outside[0]
    warnings.warn(
        f"{len(outside)} of {len(labels)} input images (the first: input {labels[first]}) have "
        f"pixels from {float(flat[first].min()):g} to {float(flat[first].max()):g}, far outside "
        "the [0, 1] the network was trained on: float images are read as 0..1 and uint8 ones "
        "as 0..255, before the network's own normalisation (divide by 255?)",
        stacklevel=4,
    )


def _as_nchw(pixels: Tensor, layout: str) -> Tensor:
    """``pixels`` in ``layout`` with its axes ordered N, C, H, W, absent ones of length 1."""
    present = sorted(layout, key="NCHW".index)
    pixels = pixels.permute(*(layout.index(axis) for axis in present))
    for position, axis in enumerate("NCHW"):
        if axis not in layout:
            pixels = pixels.unsqueeze(position)
    return pixels
