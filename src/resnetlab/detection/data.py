"""Detection data: sets of ``(uint8 image (3, H, W), target)``, batches in a seeded order.

A target is torchvision's: ``boxes`` (N, 4) as x0, y0, x1, y1 in pixels, ``labels`` (N,)
counted from 1 (0 is the background), and for COCO data ``iscrowd`` (N,), whose boxes neither
train nor count in mAP.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from resnetlab.data.seeds import derive_seed, epoch_order, sample_hash

Target = dict[str, torch.Tensor]
_FLIP_STREAM = 1


class DetectionSet(Dataset):
    """A split: ``classes`` (names, label i + 1 is ``classes[i]``), ``names`` (one per image,
    for messages and drawings), and ``(image, target)`` items."""

    classes: list[str]
    names: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        raise NotImplementedError


def training_target(target: Target) -> Target:
    """The boxes a detector trains on: without crowd boxes."""
    keep = ~target["iscrowd"].bool() if "iscrowd" in target else slice(None)
    return {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """The image mirrored left to right, and its boxes with it."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def training_batches(
    data: DetectionSet, batch_size: int, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[list[torch.Tensor], list[Target]]]:
    """Epoch ``epoch``'s full batches from batch ``start`` on: the order is seeded by (seed,
    epoch) and every image is flipped or not by (seed, epoch, index), so a resumed run sees the
    batches of an uninterrupted one."""
    order = epoch_order(len(data), seed, epoch)
    flips = sample_hash(order, derive_seed(seed, epoch, _FLIP_STREAM)) % 2 == 1
    for first in range(start * batch_size, len(data) - batch_size + 1, batch_size):
        images, targets = [], []
        for index, flip in zip(
            order[first : first + batch_size].tolist(),
            flips[first : first + batch_size].tolist(),
            strict=True,
        ):
            image, target = data[index]
            if flip:
                image, target = hflip(image, target)
            images.append(image)
            targets.append(training_target(target))
        yield images, targets


def detector_inputs(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 images as a detector's inputs: floats in [0, 1] on ``device``."""
    return [image.to(device).float() / 255 for image in images]


def targets_on(targets: list[Target], device: torch.device | str) -> list[Target]:
    """``targets`` (or a detector's outputs) with every tensor on ``device``."""
    return [{key: value.to(device) for key, value in target.items()} for target in targets]


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live."""
    return next(model.parameters()).device


def detections(model: torch.nn.Module, images: list[torch.Tensor]) -> list[Target]:
    """``model``'s detections for uint8 ``images``, computed where it lives, on the CPU."""
    return targets_on(model(detector_inputs(images, device_of(model))), "cpu")


def num_batches(data: DetectionSet, batch_size: int) -> int:
    """Full training batches per epoch."""
    return len(data) // batch_size
