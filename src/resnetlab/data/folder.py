"""Image folders: ``DIR/<class>/*`` or ``DIR/{train,val,test}/<class>/*``, read lazily.

Images are decoded one at a time when an item is read, following the conventions that
``resnetlab.data.decode`` sets for every source of images: greyscale or RGB, the largest
centred square resized to ``image_size``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from resnetlab.data.bundle import DataBundle
from resnetlab.data.decode import IMAGE_EXTENSIONS, BadImage, decode_image, is_image_file
from resnetlab.data.splits import split_indices, split_subsets
from resnetlab.data.stats import dataset_mean_std
from resnetlab.errors import ResnetlabError

SPLIT_FOLDERS = ("train", "val", "test")
Sample = tuple[Path, int]


class ImageFileDataset(Dataset):
    """``(image, label)`` pairs decoded from files when read; images float32 in [0, 1]."""

    def __init__(self, samples: list[Sample], *, size: int, channels: int) -> None:
        self.samples, self.size, self.channels = samples, size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = decode_image(path, self.channels, self.size)
        except BadImage as bad:
            raise ResnetlabError(str(bad)) from None
        return image.float().div_(255), label


def scan_image_folder(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Class names (the sub-folders of ``root``, sorted) and ``(path, label)`` of every image.

    Images are found by extension, in sub-folders too; hidden files are skipped. A class
    folder without images is kept (so class indices stay stable) with a warning.
    """
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ResnetlabError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples: list[Sample] = []
    for label, folder in enumerate(class_dirs):
        images = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and is_image_file(p) and not p.name.startswith(".")
        )
        if not images:
            warnings.warn(f"class folder {folder} has no images", stacklevel=2)
        samples.extend((path, label) for path in images)
    if not samples:
        extensions = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise ResnetlabError(f"{root}: no images ({extensions}) in any class folder")
    return [folder.name for folder in class_dirs], samples


def load_image_folder(
    root: str | Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None = None,
    in_chans: int | None = None,
) -> DataBundle:
    """Load an image folder; val/test folders that are absent are split off the training one.

    ``image_size`` defaults to the shorter side of the first training image and ``in_chans``
    to 1 if that image is greyscale, else 3. Mean/std come from (a sample of) the training split.
    """
    root = Path(root)
    folders = split_folders(root)
    classes, train_samples = scan_image_folder(folders["train"])
    given: dict[str, list[Sample]] = {}
    for split in ("val", "test"):
        if split in folders:
            split_classes, given[split] = scan_image_folder(folders[split])
            _check_same_classes(root, classes, split, split_classes)
    size, channels = _image_format(train_samples[0][0], image_size, in_chans)

    def dataset(samples: list[Sample]) -> ImageFileDataset:
        return ImageFileDataset(samples, size=size, channels=channels)

    split = split_indices(
        [label for _, label in train_samples],
        val_fraction=0.0 if "val" in given else val_fraction,
        test_fraction=0.0 if "test" in given else test_fraction,
        seed=seed,
        class_names=classes,
    )
    train, val, test = split_subsets(dataset(train_samples), split)
    val = dataset(given["val"]) if "val" in given else val
    test = dataset(given["test"]) if "test" in given else test
    mean, std = dataset_mean_std(train, seed=seed)
    name = root.resolve().name
    return DataBundle(name, "image", classes, (channels, size, size), train, val, test, mean, std)


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train": root}`` for a plain class layout, else the split folders that exist."""
    present = {name: root / name for name in SPLIT_FOLDERS if (root / name).is_dir()}
    if not present:
        return {"train": root}
    if "train" not in present:
        raise ResnetlabError(f"{root}: has {'/ and '.join(present)}/ but no train/ folder")
    others = sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_FOLDERS
    )
    if others:
        raise ResnetlabError(
            f"{root}: has train/ next to other folders ({', '.join(others)}); "
            "expected only train/, val/, test/ or only class folders"
        )
    return present


def _check_same_classes(root: Path, classes: list[str], split: str, other: list[str]) -> None:
    """Raise an error naming the classes that only one of train/ and ``split``/ has."""
    if classes == other:
        return
    only_train = sorted(set(classes) - set(other))
    only_split = sorted(set(other) - set(classes))
    raise ResnetlabError(
        f"{root}: class folders differ between train/ and {split}/ "
        f"(only in train: {', '.join(only_train) or '-'}; "
        f"only in {split}: {', '.join(only_split) or '-'})"
    )


def _image_format(path: Path, image_size: int | None, in_chans: int | None) -> tuple[int, int]:
    """``(size, channels)``: as given, else the shorter side and greyscale-or-RGB of ``path``."""
    if image_size is not None and in_chans is not None:
        return image_size, in_chans
    try:
        with Image.open(path) as image:
            side, mode = min(image.size), image.mode
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot read the image ({exc})") from None
    channels = 1 if Image.getmodebase(mode) == "L" else 3
    return image_size or side, in_chans or channels
