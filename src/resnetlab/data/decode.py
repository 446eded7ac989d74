"""Decode one image file of any common format and colour mode into a uint8 tensor.

Conventions (the same for every source that decodes images):

- The format is read from the file's content, never from its extension: a PNG named ``.jpg``
  decodes, a text file named ``.jpg`` is a bad file.
- Only the first frame of an animated GIF or WebP is used.
- The EXIF orientation tag is applied, so a phone photo stands the way it was shot.
- Transparent images (RGBA, LA, palette with transparency) are composited on black, which is
  what their pixels mean when the alpha is multiplied in; 16-bit greyscale is scaled to 8 bits
  (``v / 257``), CMYK is converted by Pillow's formula.
- ``size`` gives a ``size x size`` image: the largest centred square is cut out and resized with
  an antialiased bilinear filter: "rescale the shorter side, then crop out the central patch",
  as Krizhevsky et al. 2012 (sec. 2) prepared ImageNet. Nothing is stretched, and the result
  is deterministic.
- Truncated files are errors: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, so a file
  that was cut short while copying is reported instead of being padded with grey.
"""

from __future__ import annotations

import io
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from resnetlab.errors import ResnetlabError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class StoredImage(ABC):
    """An image file's bytes stored inside another file, ``archive`` (a shard's member, a
    Parquet file's cell), with the key of its sample. It stands wherever a file's path does:
    its path, ``archive/name``, names it in reports and caches, and ``decode_array`` reads
    it."""

    archive: Path
    name: str
    key: str

    def __fspath__(self) -> str:
        return os.path.join(self.archive, self.name)

    def __str__(self) -> str:  # as a path prints, in reports
        return self.__fspath__()

    @abstractmethod
    def read(self) -> bytes:
        """Its bytes."""

    @property
    @abstractmethod
    def place(self) -> str:
        """Where in ``archive`` it lies: with the archive's size and mtime, what the
        decode-once cache keys it by."""


@dataclass(frozen=True)
class ArchiveMember(StoredImage):
    """An image file inside a tar archive (a shard, ``data.shards``): where its bytes lie."""

    archive: Path
    name: str
    offset: int  # of its data in the archive
    size: int
    key: str

    def read(self) -> bytes:
        """Its bytes (fewer than ``size`` where the archive was cut short)."""
        with open(self.archive, "rb") as archive:
            archive.seek(self.offset)
            return archive.read(self.size)

    @property
    def place(self) -> str:
        return f"{self.offset}:{self.size}"


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Pillow's image of a file or a ``StoredImage``, opened but not yet decoded."""
    if isinstance(path, StoredImage):
        return Image.open(io.BytesIO(path.read()))
    return Image.open(path)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of the image extensions (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` (inside ``root``) or a folder between them is hidden: named ``.*``."""
    return any(part.startswith(".") for part in path.parts[len(root.parts) :])


class BadImage(Exception):
    """A file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _check_channels(channels: int) -> str:
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    return _MODES[channels]


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert ``img`` to ``L`` or ``RGB``: 16-bit scaled down, transparency on black."""
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
    if img.mode in _TRANSPARENT_MODES or (img.mode == "P" and "transparency" in img.info):
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return img if img.mode == mode else img.convert(mode)


def _square(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``img``, resized to ``size x size`` (bilinear, antialiased)."""
    width, height = img.size
    if width == height == size:
        return img
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def _read_error(path: Path, exc: Exception) -> BadImage:
    """Turn whatever Pillow or the OS raised into a ``BadImage`` with a short reason."""
    if isinstance(exc, UnidentifiedImageError):
        return BadImage(path, "not an image (unrecognised content)")
    if isinstance(exc, OSError) and exc.errno is not None:
        return BadImage(path, f"cannot read file ({exc.strerror})")
    if "truncated" in str(exc).lower():
        return BadImage(path, "truncated (the file ends inside the image data)")
    return BadImage(path, f"cannot decode ({exc})")


def decode_array(
    path: str | os.PathLike[str], channels: int = 3, size: int | None = None
) -> np.ndarray:
    """Decode ``path`` into a uint8 numpy array (C, H, W); raise ``BadImage`` if it is unreadable.

    ``channels`` is 1 or 3 (``ValueError`` otherwise); ``size`` gives a square image (see the
    module docstring), ``None`` keeps the original size. ``path`` may be a ``StoredImage``.
    """
    _check_channels(channels)  # a wrong count is a ValueError, not a bad file
    name = Path(path)
    try:
        data = path.read() if isinstance(path, StoredImage) else name.read_bytes()
    except OSError as exc:
        raise _read_error(name, exc) from exc
    return decode_bytes(data, name, channels, size)


def decode_bytes(
    data: bytes, name: str | os.PathLike[str], channels: int = 3, size: int | None = None
) -> np.ndarray:
    """An image file's ``data`` decoded as ``decode_array`` decodes the file; a ``BadImage``
    names it ``name``."""
    _check_channels(channels)
    if not data:
        raise BadImage(name, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return opened_array(img, channels, size)  # a writable copy that outlives the bytes
    except Exception as exc:  # Pillow raises many types on malformed data; all mean "bad file"
        raise _read_error(Path(name), exc) from exc


def opened_array(img: Image.Image, channels: int = 3, size: int | None = None) -> np.ndarray:
    """An opened, not yet loaded Pillow image decoded as ``decode_array`` decodes a file (a
    JPEG at the smallest DCT scale that covers ``size``); Pillow's errors pass through."""
    if size is not None:
        img.draft(None, (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale if enough
    img.load()
    return image_array(img, channels, size)


def image_array(img: Image.Image, channels: int = 3, size: int | None = None) -> np.ndarray:
    """A decoded Pillow image as a new uint8 array (C, H, W), prepared as ``decode_array``
    prepares a file's (orientation, mode, square size)."""
    img = _to_mode(ImageOps.exif_transpose(img), _check_channels(channels))
    if size is not None:
        img = _square(img, size)
    pixels = np.array(img)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def square_images(images: np.ndarray, size: int) -> np.ndarray:
    """Images (N, C, H, W), uint8 or float32, each cut and resized to ``size x size`` as a
    file's are, channel by channel (Pillow resizes an image's channels independently, so a
    uint8 image comes out as it would from its file)."""
    squared = np.empty((*images.shape[:2], size, size), dtype=images.dtype)
    for index in np.ndindex(*images.shape[:2]):
        squared[index] = np.asarray(_square(Image.fromarray(images[index]), size))
    return squared


def decode_image(
    path: str | os.PathLike[str], channels: int = 3, size: int | None = None
) -> torch.Tensor:
    """Decode ``path`` into a uint8 tensor (C, H, W); raise ``BadImage`` if it is unreadable."""
    return torch.from_numpy(np.ascontiguousarray(decode_array(path, channels, size)))


def try_decode(
    path: str | os.PathLike[str], channels: int = 3, size: int | None = None
) -> tuple[torch.Tensor | None, str | None]:
    """``(image, None)`` for a good file, ``(None, reason)`` for a bad one; never raises."""
    try:
        return decode_image(path, channels, size), None
    except BadImage as bad:
        return None, bad.reason


def _warn_bad_file(path: str | os.PathLike[str], reason: str, stream: TextIO) -> None:
    print(f"resnetlab: warning: skipped {path}: {reason}", file=stream)


@dataclass
class BadFileReport:
    """The files that could not be decoded, each with its reason."""

    entries: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike[str], reason: str, *, warn: bool = False) -> None:
        """Record one bad file; with ``warn``, also print its warning line now."""
        self.entries.append((Path(path), reason))
        if warn:
            _warn_bad_file(path, reason, sys.stderr)

    def __len__(self) -> int:
        return len(self.entries)

    def warn_each(self, stream: TextIO | None = None) -> None:
        """Print one warning line per bad file (to stderr by default), naming it and the reason."""
        for path, reason in self.entries:
            _warn_bad_file(path, reason, stream or sys.stderr)

    def summary(self) -> str:
        """One line with the number of bad files (``no bad image files`` when there are none)."""
        if not self.entries:
            return "no bad image files"
        noun = "file" if len(self.entries) == 1 else "files"
        return f"skipped {len(self.entries)} bad image {noun}"

    def raise_if_strict(self) -> None:
        """Raise ``ResnetlabError`` listing every bad file (``--strict``), if there is any."""
        if self.entries:
            listing = "; ".join(f"{path} ({reason})" for path, reason in self.entries)
            raise ResnetlabError(f"{len(self.entries)} bad image file(s) (--strict): {listing}")
