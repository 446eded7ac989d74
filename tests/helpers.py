"""Data that several test modules make: small image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Two learnable classes: horizontal vs vertical stripes, with noise."""
    rng = np.random.default_rng(seed)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            stripes = (np.arange(size) // 2 % 2 * 180).astype(np.uint8)
            image = np.repeat(
                stripes[:, None] if axis == 0 else stripes[None, :], size, axis=1 - axis
            )
            noisy = np.clip(image + rng.integers(0, 60, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([noisy] * 3, axis=-1)).save(folder / f"{i:03d}.png")
    return root
