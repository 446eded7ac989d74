"""Image folders: ``DIR/<class>/*`` or ``DIR/{train,val,test}/<class>/*``.

Images follow the conventions that ``resnetlab.data.decode`` sets for every source of images:
greyscale or RGB, the largest centred square resized to ``image_size``. Small datasets are
decoded once into a cached uint8 tensor (``data.cache``); large ones stream (``data.streaming``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import (
    channel_stats,
    default_cache_dir,
    fits_in_memory,
    load_or_build,
    relative_paths,
)
from resnetlab.data.decode import (
    IMAGE_EXTENSIONS,
    BadFileReport,
    is_image_file,
    open_image,
    try_decode,
)
from resnetlab.data.splits import record_split, restore_split, split_indices, split_subsets
from resnetlab.data.stats import dataset_mean_std
from resnetlab.data.streaming import ImageFileDataset, train_transforms
from resnetlab.errors import ResnetlabError

SPLIT_FOLDERS = ("train", "val", "test")
Sample = tuple[Path, int]  # an image file (or a StoredImage of a shard, a Parquet file), label
SampleSets = dict[str, tuple[Path, list[Sample]]]  # by split: the folder and its samples


def scan_image_folder(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Class names (the sub-folders of ``root``, sorted) and ``(path, label)`` of every image,
    sorted by the path relative to ``root`` as a string (the cache's order: every pipeline
    numbers the files alike, which recorded splits rely on).

    Images are found by extension, in sub-folders too; hidden files and folders are skipped.
    A class folder without images is kept (so class indices stay stable) with a warning.
    """
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ResnetlabError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples: list[Sample] = []
    for label, folder in enumerate(class_dirs):
        images = _images_below(folder)
        if not images:
            warnings.warn(f"class folder {folder} has no images", stacklevel=2)
        samples.extend((path, label) for path in images)
    if not samples:
        extensions = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise ResnetlabError(f"{root}: no images ({extensions}) in any class folder")
    names = relative_paths(root, [path for path, _ in samples])
    order = sorted(range(len(samples)), key=names.__getitem__)
    return [folder.name for folder in class_dirs], [samples[i] for i in order]


def _images_below(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its sub-folders (not those behind a link), hidden
    files and folders left out: ``os.scandir``, which knows a file from a folder without a
    ``stat`` (20,000 images: a quarter of ``rglob``'s time)."""
    images, pending = [], [os.fspath(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file() and is_image_file(entry.name):
                    images.append(Path(entry.path))
    return images


@dataclass(frozen=True)
class ImageOptions:
    """How an image folder is read: where to cache, how much memory the cache may take, what
    to do with bad files, extra split folders, and the streaming pipeline's train transforms."""

    cache_dir: str | None = field(default_factory=default_cache_dir)  # None: no cache file
    cache_mem_gb: float | None = None  # None: default_memory_budget()
    strict: bool = False
    val_dir: str | None = None
    test_dir: str | None = None
    split_record: dict[str, Any] | None = None  # a checkpoint's split (``record_split``)
    augment: bool = False  # streaming train split: RandomResizedCrop + flip
    auto_augment: str | None = None
    random_erasing: float = 0.0
    workers: int | None = None  # decoding threads
    image_column: str | None = None  # image Parquet: the column of images, where several are


def load_image_folder(
    root: str | Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None = None,
    in_chans: int | None = None,
    options: ImageOptions = ImageOptions(),
) -> DataBundle:
    """Load an image folder; val/test folders that are absent are split off the training one
    (``image_bundle``)."""
    root = Path(root)
    folders = split_folders(root)
    for split, extra in (("val", options.val_dir), ("test", options.test_dir)):
        if extra is not None:
            if not Path(extra).is_dir():
                raise ResnetlabError(f"--{split}-dir: no such folder: '{extra}'")
            folders[split] = Path(extra)
    classes, sets = scan_splits(root, folders)
    return image_bundle(
        root.resolve().name, sets, classes, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, image_size=image_size, in_chans=in_chans,
        options=options,
    )  # fmt: skip


def scan_splits(
    root: Path, folders: dict[str, Path]
) -> tuple[list[str], dict[str, tuple[Path, list[Sample]]]]:
    """The class names, and each split's folder (``split_folders``) with its samples; the
    val/test folders must hold the training folder's classes."""
    classes, samples = scan_image_folder(folders["train"])
    sets = {"train": (folders["train"], samples)}
    for split in ("val", "test"):
        if split in folders:
            split_classes, samples = scan_image_folder(folders[split])
            _check_same_classes(root, classes, split, split_classes)
            sets[split] = (folders[split], samples)
    return classes, sets


def image_bundle(
    name: str,
    sets: dict[str, tuple[Path, list[Sample]]],
    classes: list[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None,
    in_chans: int | None,
    options: ImageOptions,
    dataset_class: type[ImageFileDataset] = ImageFileDataset,
) -> DataBundle:
    """The bundle of labelled images ``sets`` (``train`` and any of ``val``/``test``: the
    folder they lie in and their ``(file, label)`` samples); val/test that are absent are split
    off the training set. ``dataset_class`` reads them where they do not fit the cache, and
    names them in the split record.

    Sets that fit the memory budget are decoded once into a cached uint8 tensor; larger ones
    stream through DataLoader workers. Bad files are skipped with one warning line each and a
    summary (``strict``: an error listing them all, before any training). ``image_size``
    defaults to the shorter side of the first training image that opens and ``in_chans`` to 1
    if that image is greyscale, else 3. Mean/std come from the training split.
    """
    root, train_samples = sets["train"]
    size, channels = _image_format(root, train_samples, image_size, in_chans)
    n_files = sum(len(samples) for _, samples in sets.values())
    budget = None if options.cache_mem_gb is None else int(options.cache_mem_gb * 2**30)
    if fits_in_memory(n_files, channels, size, budget):
        datasets, bad, pipeline = _cached(sets, classes, size, channels, options)
    else:
        datasets, bad, pipeline = _streaming(sets, size, channels, options, dataset_class)
    if bad:
        if options.strict:
            bad.raise_if_strict()
        bad.warn_each(sys.stderr)
        print(f"resnetlab: warning: {bad.summary()}", file=sys.stderr)
    names = dataset_class.names(root, datasets["train"].files)
    given = {split for split in sets if split != "train"}
    if options.split_record is not None:
        split = restore_split(options.split_record, names, str(root))
    else:
        split = split_indices(
            datasets["train"].labels,
            val_fraction=0.0 if "val" in given else val_fraction,
            test_fraction=0.0 if "test" in given else test_fraction,
            seed=seed,
            class_names=classes,
        )
    streamed, augmented = datasets.get("eval"), datasets["train"]
    if isinstance(streamed, ImageFileDataset) and isinstance(augmented, ImageFileDataset):
        # each part its own file list (see ``subset``); held-out parts without augmentation
        train = augmented.subset(split.train.tolist())
        val, test = (
            None if p is None else streamed.subset(p.tolist()) for p in (split.val, split.test)
        )
    else:
        train, val, test = split_subsets(augmented, split)
    val = datasets.get("val", val)
    test = datasets.get("test", test)
    # streaming: the statistics of the plain training images, not of random crops of them
    mean, std = _train_stats(datasets.get("eval", datasets["train"]), split.train, seed)
    return DataBundle(
        name, "image", classes, (channels, size, size), train, val, test, mean, std,
        pipeline=pipeline, split_record=record_split(names, split),
    )  # fmt: skip


class LabelledImages(TensorDataset):
    """Decoded uint8 images (N, C, H, W) with int64 labels, ``labels`` for splitting and the
    ``files`` they were decoded from."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, files: list[Path]) -> None:
        super().__init__(images, labels)
        self.files = files

    @property
    def labels(self) -> list[int]:
        """The label of every image, in order."""
        return self.tensors[1].tolist()


def _cached(
    sets: dict[str, tuple[Path, list[Sample]]],
    classes: list[str],
    size: int,
    channels: int,
    options: ImageOptions,
) -> tuple[dict[str, Dataset], BadFileReport, str]:
    """Decode every split once (or load it from the cache) into uint8 tensors."""
    datasets: dict[str, Dataset] = {}
    bad = BadFileReport()
    notes = []
    for split, (folder, samples) in sets.items():
        start = time.perf_counter()
        cached = load_or_build(
            folder, [path for path, _ in samples], [label for _, label in samples], classes,
            channels, size, cache_dir=options.cache_dir, workers=options.workers,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        datasets[split] = LabelledImages(cached.images, cached.labels, cached.files)
        bad.entries.extend(cached.bad.entries)
        rate = len(cached.labels) / max(seconds, 1e-9)
        notes.append(f"{split} {len(cached.labels):,} images in {seconds:.1f} s ({rate:,.0f}/s)")
    where = "no cache" if options.cache_dir is None else f"cache {options.cache_dir}"
    return datasets, bad, f"cached uint8 tensors ({where}): {'; '.join(notes)}"


def _streaming(
    sets: dict[str, tuple[Path, list[Sample]]],
    size: int,
    channels: int,
    options: ImageOptions,
    dataset_class: type[ImageFileDataset],
) -> tuple[dict[str, Dataset], BadFileReport, str]:
    """Decode per item in DataLoader workers (datasets of ``dataset_class``): held-out images
    (and training images without augmentation) as the cache decodes them, augmented ones
    whole, then through torchvision.transforms.v2."""
    bad = BadFileReport()
    if options.strict:
        for _, samples in sets.values():
            for path, _ in samples:
                image, reason = try_decode(path, channels)
                if image is None:
                    bad.add(path, reason or "unreadable")

    def dataset(samples: list[Sample], transform: v2.Transform | None = None) -> ImageFileDataset:
        files, labels = zip(*samples, strict=True)
        decode_size = None if transform is not None else size  # random crops of whole images
        return dataset_class(files, labels, transform, channels, decode_size)

    datasets: dict[str, Dataset] = {split: dataset(samples) for split, (_, samples) in sets.items()}
    datasets["eval"] = datasets["train"]
    augment = "no augmentation"
    if options.augment:
        transform = train_transforms(size, options.auto_augment, options.random_erasing)
        datasets["train"] = dataset(sets["train"][1], transform)
        augment = "RandomResizedCrop + flip"
    what = f"{augment}; eval: decoded as by the cache"
    return datasets, bad, f"streaming from {dataset_class.source} ({what})"


def _train_stats(
    dataset: Dataset, indices: Sequence[int], seed: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training split (all of it when cached, else a sample)."""
    if isinstance(dataset, LabelledImages):
        return channel_stats(dataset.tensors[0][torch.as_tensor(indices)])
    return dataset_mean_std(Subset(dataset, list(indices)), seed=seed)


def split_folders(root: Path) -> dict[str, Path]:
    """``{"train": root}`` for a plain class layout, else the split folders that exist."""
    present = {name: root / name for name in SPLIT_FOLDERS if (root / name).is_dir()}
    if not present:
        return {"train": root}
    if "train" not in present:
        raise ResnetlabError(f"{root}: has {'/ and '.join(present)}/ but no train/ folder")
    others = sorted(
        p.name
        for p in root.iterdir()
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


def _image_format(
    root: Path, samples: list[Sample], image_size: int | None, in_chans: int | None
) -> tuple[int, int]:
    """``(size, channels)``: as given, else the shorter side and greyscale-or-RGB of the first
    of ``samples`` that opens (the files that do not are reported with the other bad files)."""
    if image_size is not None and in_chans is not None:
        return image_size, in_chans
    for path, _ in samples:
        try:
            with open_image(path) as image:
                side, mode = min(image.size), image.mode
        except OSError:
            continue
        channels = 1 if Image.getmodebase(mode) == "L" else 3
        return image_size or side, in_chans or channels
    raise ResnetlabError(f"{root}: none of the {len(samples)} image files can be read")
