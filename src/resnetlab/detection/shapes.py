"""``shapes``: a seeded synthetic detection set, generated on the fly.

256x256 images on textured backgrounds (a smooth colour field, stripes and grain), each with 1-4
circles, squares and triangles of sides 16-96 px in random colours. Partial overlaps happen; an
object never hides more than half of an earlier one. Image ``i`` of a split is a pure function
of (seed, split, i), so nothing needs caching.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from resnetlab.data.seeds import derive_seed
from resnetlab.detection.data import DetectionSet, Target

SIZE = 256
CLASSES = ("circle", "square", "triangle")
SPLITS = {"train": 2000, "val": 200, "test": 500}
_SIDES = (16, 96)
_MAX_HIDDEN = 0.5  # of an earlier object's box that a later one may cover


class ShapesSet(DetectionSet):
    """One split of ``shapes``: ``(uint8 image (3, 256, 256), target)`` per index."""

    def __init__(self, split: str, seed: int = 0, size: int | None = None) -> None:
        self.split, self.seed = split, seed
        self.size = SPLITS[split] if size is None else size
        self.classes = list(CLASSES)
        self.names = [f"shapes-{split}-{i}" for i in range(self.size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        rng = np.random.default_rng(derive_seed(self.seed, list(SPLITS).index(self.split), index))
        image = Image.fromarray(_background(rng))
        draw = ImageDraw.Draw(image)
        boxes: list[list[int]] = []
        labels: list[int] = []
        for _ in range(rng.integers(1, 5)):
            box = _place(rng, boxes)
            if box is None:
                continue
            label = int(rng.integers(len(CLASSES)))
            _draw(draw, label, box, tuple(int(c) for c in rng.integers(0, 256, 3)))
            boxes.append(box)
            labels.append(label + 1)  # 0 is the detectors' background
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return pixels, {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field with stripes of random frequency and direction, and grain."""
    field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    smooth = np.asarray(field.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    texture = stripes[..., None] * rng.uniform(5, 30) + rng.normal(0, 8, (SIZE, SIZE, 1))
    return np.clip(smooth * 0.8 + texture + 25, 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, boxes: list[list[int]], tries: int = 20) -> list[int] | None:
    """A box ``[x0, y0, x1, y1]`` inside the image that hides at most half of each earlier one."""
    for _ in range(tries):
        side = int(rng.integers(_SIDES[0], _SIDES[1] + 1))
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
        box = [x0, y0, x0 + side, y0 + side]
        if all(_covered(box, earlier) <= _MAX_HIDDEN for earlier in boxes):
            return box
    return None


def _covered(box: list[int], earlier: list[int]) -> float:
    """The fraction of ``earlier``'s area that ``box`` covers."""
    w = min(box[2], earlier[2]) - max(box[0], earlier[0])
    h = min(box[3], earlier[3]) - max(box[1], earlier[1])
    area = (earlier[2] - earlier[0]) * (earlier[3] - earlier[1])
    return max(w, 0) * max(h, 0) / area


def _draw(draw: ImageDraw.ImageDraw, label: int, box: list[int], colour: tuple[int, ...]) -> None:
    """A circle, square or triangle filling ``box`` (exclusive right/bottom edges)."""
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if label == 0:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif label == 1:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
