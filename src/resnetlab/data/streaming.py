"""Large images that do not fit the decode-once cache: decode per item in DataLoader workers.

Images to evaluate are decoded as the cache, ``predict`` and ``serve`` decode them
(``decode.decode_image`` at the input size): uint8, the same pixels for the same file. Training
images may be decoded whole and go through random transforms from ``torchvision.transforms.v2``
that end with float32 images in [0, 1]. Normalisation happens later on the batch
(``augment.normalize_batch``), as for every other source (see ``DataBundle``). MixUp/CutMix
mix whole batches, so they are returned separately, to be applied to ``(images, labels)`` after
the loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from resnetlab.data.cache import relative_paths
from resnetlab.data.decode import BadFileReport, try_decode
from resnetlab.errors import ResnetlabError

_AUTO_AUGMENT: dict[str, Callable[[], v2.Transform]] = {
    "trivial": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
}


def train_transforms(
    size: int, auto_augment: str | None = None, random_erasing: float = 0.0
) -> v2.Compose:
    """ImageNet-style training transforms for a uint8 image (C, H, W) -> float (C, size, size).

    RandomResizedCrop (the "Inception" crop, Szegedy et al. 2015, sec. 6) and a horizontal
    flip, optionally TrivialAugmentWide (Müller & Hutter 2021) or RandAugment (Cubuk et al. 2020) on
    the uint8 pixels, then the conversion to [0, 1] and optionally RandomErasing (Zhong et al.
    2020) with probability ``random_erasing``.
    """
    if auto_augment is not None and auto_augment not in _AUTO_AUGMENT:
        raise ResnetlabError(
            f"--auto-augment: unknown policy {auto_augment!r}; "
            f"choose from {', '.join(_AUTO_AUGMENT)}"
        )
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if auto_augment is not None:
        steps.append(_AUTO_AUGMENT[auto_augment]())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)


def mixup_cutmix(
    num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0
) -> v2.RandomChoice | None:
    """MixUp and/or CutMix for a batch: ``images, soft_labels = mix(images, labels)``.

    One of the enabled methods (alpha > 0) is picked at random per batch; labels become soft
    (N, num_classes) targets. None when both alphas are 0.
    """
    mixers: list[v2.Transform] = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(mixers) if mixers else None


class ImageFileDataset(Dataset):
    """``(transform(image), label)`` for a list of image files, decoded when an item is read
    (``decode.decode_image``: uint8 (C, ``size``, ``size``), or whole with ``size`` None).

    A file that cannot be decoded never stops an epoch: it is reported once (a warning line on
    stderr, and in ``bad``) and replaced by the next readable file in the list, with that file's
    label. Each DataLoader worker keeps its own ``bad`` record, so the main process only sees
    the files it read itself; scan the folder with ``cache.decode_all`` for a complete list.
    """

    source = "files"  # what the images are read from, in the run's description

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        labels: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        channels: int = 3,
        size: int | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform
        self.channels = channels
        self.size = size
        self.bad = BadFileReport()
        self._bad_indices: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageFileDataset:
        """The files at ``indices`` as a dataset of their own: a bad one is replaced by the next
        readable file of the same part (a split never borrows another split's image)."""
        files, labels = [self.files[i] for i in indices], [self.labels[i] for i in indices]
        return type(self)(files, labels, self.transform, self.channels, self.size)

    @staticmethod
    def names(root: Path, files: Sequence[str | os.PathLike[str]]) -> list[str]:
        """The name of each file that a split record keeps: its path relative to ``root``."""
        return relative_paths(root, files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            if i in self._bad_indices:
                continue
            image, reason = try_decode(self.files[i], self.channels, self.size)
            if image is not None:
                return (self.transform(image) if self.transform else image), self.labels[i]
            self._bad_indices.add(i)
            self.bad.add(self.files[i], reason or "unreadable", warn=True)
        raise ResnetlabError(f"none of the {len(self.files)} image files can be decoded")
