"""Clips (C, T, H, W): folders of clips per class, and the built-in ``moving-digits`` set.

A clip folder is ``DIR/<class>/<clip>``, each clip a folder of frames (image files, in name
order) or a ``.npy``/``.pt`` array of shape (C, T, H, W), C 1 or 3 (uint8 pixels, or floats in
[0, 1]). Clips are loaded into memory, as one tensor: frames follow the image conventions of
``data.decode`` (greyscale or RGB, the largest centred square resized to ``--image-size``,
default the first frame's shorter side); arrays keep their size unless ``--image-size``
resizes them to a square. Every clip is cut to the frame count of the shortest one (evenly
spaced frames), greyscale clips are repeated to RGB if any clip is RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.data.augment import to_unit_float
from resnetlab.data.bundle import DataBundle, bundle_from_tensors
from resnetlab.data.decode import BadImage, decode_image, is_hidden, is_image_file
from resnetlab.data.folder import SPLIT_FOLDERS
from resnetlab.errors import ResnetlabError

CLIP_SUFFIXES = (".npy", ".pt")
MOVING_DIGITS_SEED = 2018  # the year of Tran et al.'s "A Closer Look at Spatiotemporal ..."
MOVING_DIGITS_CLIPS = 2000
MOVING_DIGITS_CLASSES = ["left-or-up", "right-or-down"]


def make_moving_digits(
    digits: np.ndarray,
    n_clips: int = MOVING_DIGITS_CLIPS,
    *,
    frames: int = 16,
    size: int = 64,
    seed: int = MOVING_DIGITS_SEED,
    shuffle_frames: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (n_clips, 1, frames, size, size) uint8 of one digit moving in a straight line,
    and labels: 0 when it moves left or up, 1 when it moves right or down.

    The two classes are time-reversals of each other, and a clip's path is drawn before its
    label: the axis (horizontal or vertical), the speed (1 or 2 pixels a frame at 64x64), the
    segment it covers and the position across it; the label only says in which direction the
    segment is run through. So the frames of a clip, as an unordered set, have the same
    distribution in both classes: no single frame and no set of frames tells the label, only
    their order. Labels and axes are balanced exactly. ``digits`` are square greyscale images
    (N, S, S) in [0, 255]; ``shuffle_frames`` permutes each clip's frames (a seeded
    permutation per clip), which destroys the motion and keeps everything else.
    """
    rng = np.random.default_rng(seed)
    shuffler = np.random.default_rng([seed, 1])  # its own stream: the same clips either way
    side = digits.shape[-1]
    room = size - side  # positions a digit can take along one axis
    steps = frames - 1
    speeds = [v for v in (1, 2) if v * steps <= room] or [room / steps]
    label = np.arange(n_clips) % 2
    axis = np.arange(n_clips) // 2 % 2  # 0: horizontal, 1: vertical
    order = rng.permutation(n_clips)
    label, axis = label[order], axis[order]
    clips = np.zeros((n_clips, frames, size, size), dtype=np.uint8)
    for i in range(n_clips):
        digit = digits[rng.integers(len(digits))]
        speed = speeds[rng.integers(len(speeds))]
        start = rng.integers(0, int(room - speed * steps) + 1)
        across = rng.integers(0, room + 1)
        along = np.rint(start + speed * np.arange(frames)).astype(int)
        if label[i] == 0:
            along = along[::-1]
        for t, position in enumerate(along):
            row, col = (across, position) if axis[i] == 0 else (position, across)
            clips[i, t, row : row + side, col : col + side] = digit
        if shuffle_frames:
            clips[i] = clips[i, shuffler.permutation(frames)]
    return torch.from_numpy(clips[:, None]), torch.from_numpy(label.astype(np.int64))


def resize_clips(clips: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Clips (N, C, T, H, W) with every frame resized to ``size x size`` (antialiased), in
    chunks of clips; uint8 stays uint8."""
    if clips.shape[-2:] == (size, size):
        return clips
    out = []
    for part in clips.split(chunk):
        n, c, t, h, w = part.shape
        frames = part.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w).float()
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True)
        if clips.dtype == torch.uint8:
            frames = frames.round().clamp(0, 255).to(torch.uint8)
        out.append(frames.reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4))
    return torch.cat(out).contiguous()


def is_clip_folder(root: Path) -> bool:
    """Whether ``root`` is a clip folder: without ``train/``, ``val/`` or ``test/`` (an image
    folder's split layout), its class folders hold no image files themselves, and at least
    one holds a ``.npy``/``.pt`` clip or a folder of frames."""
    if any((root / split).is_dir() for split in SPLIT_FOLDERS):
        return False
    classes = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = False
    for folder in classes:
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_file() and is_image_file(entry):
                return False
            found = found or _is_clip(entry)
    return found


def _is_clip(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in CLIP_SUFFIXES
    return path.is_dir() and bool(_frames(path))


def _frames(folder: Path) -> list[Path]:
    """The image files in a clip's folder, sorted; hidden ones (``._000.png``) skipped."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not is_hidden(p, folder)
    )


def load_clip_folder(
    root: str | Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None = None,
    in_chans: int | None = None,
) -> DataBundle:
    """Load the clip folder ``root`` into memory and split it (seeded, stratified)."""
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [
        (clip, label)
        for label, folder in enumerate(class_dirs)
        for clip in sorted(folder.iterdir())
        if not clip.name.startswith(".") and _is_clip(clip)
    ]
    if not samples:
        raise ResnetlabError(f"{root}: no clips (.npy, .pt or folders of frames) in any class")
    clips = [_read_clip(path, image_size) for path, _ in samples]
    clips = _same_format(clips, samples, in_chans)
    labels = torch.tensor([label for _, label in samples])
    bundle = bundle_from_tensors(
        str(root), "video", torch.stack(clips), labels, [p.name for p in class_dirs],
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
    )  # fmt: skip
    bundle.pipeline = f"in-memory clips ({len(samples)} from {root})"
    return bundle


def _read_clip(path: Path, image_size: int | None) -> torch.Tensor:
    """One clip (C, T, H, W), uint8 or float32; an error naming the file if it is unreadable."""
    if path.is_dir():
        frames = _frames(path)
        try:
            first = decode_image(frames[0], 3)
            grey = bool((first[0] == first[1]).all() and (first[0] == first[2]).all())
            size = image_size or min(first.shape[1:])
            images = [decode_image(f, 1 if grey else 3, size) for f in frames]
        except BadImage as bad:
            raise ResnetlabError(str(bad)) from None
        return torch.stack(images, dim=1)
    try:
        if path.suffix.lower() == ".npy":
            clip = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            clip = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # numpy and torch raise many types on a malformed file
        raise ResnetlabError(f"{path}: cannot read the clip ({exc})") from None
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[0] not in (1, 3):
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ResnetlabError(f"{path}: a clip must be an array (C, T, H, W), C 1 or 3; got {shape}")
    clip = clip if clip.dtype == torch.uint8 else clip.float()
    return clip if image_size is None else resize_clips(clip[None], image_size)[0]


def _same_format(
    clips: Sequence[torch.Tensor], samples: Sequence[tuple[Path, int]], in_chans: int | None
) -> list[torch.Tensor]:
    """The clips with one frame count (the shortest's), size, channel count and dtype."""
    frames = min(clip.shape[1] for clip in clips)
    channels = in_chans or max(clip.shape[0] for clip in clips)
    as_uint8 = all(clip.dtype == torch.uint8 for clip in clips)
    height, width = clips[0].shape[2:]
    out = []
    for clip, (path, _) in zip(clips, samples, strict=True):
        if clip.shape[2:] != (height, width):
            raise ResnetlabError(
                f"{path}: frames of {clip.shape[3]}x{clip.shape[2]}, the first clip's are "
                f"{width}x{height}; --image-size resizes every clip to one size"
            )
        if clip.shape[0] > channels:
            raise ResnetlabError(f"{path}: an RGB clip, but --in-chans is {channels}")
        keep = torch.linspace(0, clip.shape[1] - 1, frames).round().long()
        clip = clip[:, keep].expand(channels, -1, -1, -1)
        out.append(clip if as_uint8 else to_unit_float(clip))
    return out
