"""An uploaded file as a decoded image, or the HTTP status and message that refuse it."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resnetlab.data.decode import opened_array


class UploadRefused(Exception):
    """An upload the server answers with ``status`` and ``message`` instead of a prediction."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_upload(data: bytes, name: str, max_pixels: int, channels: int, size: int) -> torch.Tensor:
    """``data`` decoded as ``predict`` decodes an image file: uint8 (``channels``, ``size``,
    ``size``); its pixel count is checked against ``max_pixels`` before decoding. Refused: 415
    for what is not an image, 400 for a truncated or damaged one (its EXIF too) or one of too
    many pixels (a decompression bomb: a small file that decodes to gigabytes)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own limit, checked while opening
        raise UploadRefused(
            400,
            f"{name}: more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the limit "
            f"of {max_pixels:,} (a decompression bomb?)",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UploadRefused(415, f"{name}: not an image (unrecognised content)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadRefused(
            400,
            f"{name}: {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a decompression bomb?)",
        )
    try:
        pixels = opened_array(image, channels, size)
    except Exception as exc:  # Pillow raises many types on malformed data; all mean "bad file"
        reason = "truncated" if "truncated" in str(exc).lower() else f"damaged ({exc})"
        raise UploadRefused(400, f"{name}: {reason}: the image cannot be decoded") from None
    return torch.from_numpy(np.ascontiguousarray(pixels))
