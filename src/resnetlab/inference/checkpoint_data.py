"""The data a checkpoint was trained on, loaded again as the run split it, or other data
loaded whole for the checkpoint; one split of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from resnetlab.data import BUILTIN_DATASETS, ImageOptions, TableOptions, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.image_parquet import is_image_parquet
from resnetlab.errors import ResnetlabError
from resnetlab.training.step import Normalizer

SPLITS = ("test", "val", "train", "all")


def is_training_data(header: dict[str, Any], source: str | None) -> bool:
    """Whether ``source`` (None: the default) is the data the checkpoint was trained on."""
    trained_on = header["data"]["source"]
    if source is None or source == trained_on:
        return True
    if source in BUILTIN_DATASETS or trained_on in BUILTIN_DATASETS:
        return False
    return Path(source).resolve() == Path(trained_on).resolve()


def load_data_like(header: dict[str, Any], source: str | None) -> DataBundle:
    """Load ``source`` for a checkpoint. The training data (the default) is split exactly as
    the run split it: its recorded split folders, and for image folders and tables the
    recorded split of the files or rows (see ``splits.restore_split``). Any other source is
    loaded whole, as the training split of a bundle without val/test splits. Tables get the
    checkpoint's fitted preprocessing."""
    data = header["data"]
    image_size = {"image": header["input_shape"][-1], "video": data.get("image_size")}.get(
        header["data_kind"]
    )
    target = data["target"]
    if is_training_data(header, source):
        fractions = {"val_fraction": data["val_fraction"], "test_fraction": data["test_fraction"]}
        options = ImageOptions(
            val_dir=data.get("val_dir"),
            test_dir=data.get("test_dir"),
            split_record=data.get("split"),
            image_column=data.get("image_column"),
        )
    else:
        fractions, options = {"val_fraction": 0.0, "test_fraction": 0.0}, ImageOptions()
        if header["data_kind"] == "image":  # image Parquet's columns, for image Parquet only
            parquet = is_image_parquet(source or "")
            target = target if parquet else None
            options = ImageOptions(image_column=data.get("image_column") if parquet else None)
    bundle = load_data(
        source or data["source"],
        target=target,
        seed=data["seed"],
        image_size=image_size,
        in_chans=header["in_chans"],
        image_options=options,
        table_options=TableOptions(fitted=header.get("table"), split_record=options.split_record),
        **fractions,
    )
    if bundle.classes != header["classes"]:
        missing = sorted(set(header["classes"]) ^ set(bundle.classes))
        detail = f"differing: {', '.join(missing)}" if missing else "same names, other order"
        raise ResnetlabError(f"--data {source}: classes do not match the checkpoint's ({detail})")
    return bundle


def pick_split(bundle: DataBundle, split: str, why_absent: str = "") -> Dataset:
    """One split of ``bundle`` (``all`` joins every split), or a clear error if it is absent
    (``why_absent`` says why it may be)."""
    if split not in SPLITS:
        raise ResnetlabError(f"--split must be one of {', '.join(SPLITS)} (got {split!r})")
    parts = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    if split == "all":
        return ConcatDataset([d for d in parts.values() if d is not None])
    if parts[split] is None:
        raise ResnetlabError(f"--split {split}: the data has no {split} split{why_absent}")
    return parts[split]


def input_preprocessing(header: dict[str, Any]) -> Normalizer:
    """What turns a checkpoint's raw inputs (images in [0, 1] or uint8, sequences, table rows)
    into its network's inputs: today the training split's mean/std, per channel or feature.
    A table's fitted preprocessing, once a header records it, is applied here too."""
    return Normalizer(header["mean"], header["std"], header["input_shape"])
