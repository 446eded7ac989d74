"""Data sources: built-in sets, CSV and Parquet tables, image folders, shards and image
Parquet, all loaded by ``load_data``."""

from __future__ import annotations

from pathlib import Path

from resnetlab.data.builtin import (
    BUILTIN_DATASETS,
    BUILTIN_KINDS,
    load_builtin,
    make_case_study_data,
)
from resnetlab.data.bundle import DataBundle
from resnetlab.data.folder import ImageOptions, load_image_folder, scan_image_folder
from resnetlab.data.image_parquet import is_image_parquet, load_image_parquet
from resnetlab.data.shards import is_shard_source, load_shards
from resnetlab.data.splits import check_fractions, split_indices
from resnetlab.data.tabular import TableOptions, is_table_file, load_table
from resnetlab.data.video import is_clip_folder, load_clip_folder
from resnetlab.errors import ResnetlabError

__all__ = [
    "BUILTIN_DATASETS",
    "DataBundle",
    "ImageOptions",
    "TableOptions",
    "data_kind",
    "load_data",
    "make_case_study_data",
    "scan_image_folder",
    "split_indices",
]


def load_data(
    source: str,
    *,
    target: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    in_chans: int | None = None,
    image_options: ImageOptions | None = None,
    table_options: TableOptions | None = None,
) -> DataBundle:
    """Load ``source``: a built-in name, a table file (``.csv``, ``.tsv``, ``.parquet``;
    ``target`` names the label column, ``table_options`` say how to read it), an image folder,
    shards (``data.shards``), image Parquet (``data.image_parquet``; ``target`` names its label
    column) or a clip folder (``data.video``). Data without its own split is split by
    ``val_fraction``/``test_fraction``, seeded and stratified.

    For images and clips, ``image_size`` (square side) and ``in_chans`` (1 or 3) set the
    input shape (of each frame);
    for tables, ``in_chans`` (if given) is the number of features a model expects.
    ``image_options`` sets caching, bad-file handling and extra split folders for image folders
    (and shards, image Parquet).
    """
    check_fractions(val_fraction, test_fraction)
    image_options = image_options or ImageOptions()
    kind = data_kind(source)
    is_file = source not in BUILTIN_KINDS and kind == "tabular"
    parquet = kind == "image" and is_image_parquet(source)
    if target is not None and not (is_file or parquet):
        raise ResnetlabError(
            f"--target applies to table files and image Parquet only, not to {source!r}"
        )
    if image_options.image_column is not None and not parquet:
        raise ResnetlabError(
            f"--image-column applies to image Parquet only; {source!r} is {kind} data "
            "(a Parquet file whose columns hold no image is a table)"
        )
    if kind in ("image", "video"):
        _check_image_options(image_size, in_chans)
    elif image_size is not None:
        raise ResnetlabError(f"--image-size: {source!r} is tabular data, not images")
    splits = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    if source in BUILTIN_KINDS:
        bundle = load_builtin(source, image_size=image_size, in_chans=in_chans, **splits)
    elif is_file:
        bundle = load_table(source, target, table_options or TableOptions(), **splits)
    elif kind == "video":
        bundle = load_clip_folder(source, image_size=image_size, in_chans=in_chans, **splits)
    elif is_shard_source(source):
        bundle = load_shards(
            source, image_size=image_size, in_chans=in_chans, options=image_options, **splits
        )
    elif parquet:
        bundle = load_image_parquet(
            source, target, image_size=image_size, in_chans=in_chans, options=image_options,
            **splits,
        )  # fmt: skip
    else:
        bundle = load_image_folder(
            source, image_size=image_size, in_chans=in_chans, options=image_options, **splits
        )
    if kind == "tabular" and in_chans not in (None, bundle.input_shape[0]):
        raise ResnetlabError(
            f"--in-chans {in_chans}: {source!r} has {bundle.input_shape[0]} feature columns"
        )
    return bundle


def data_kind(source: str) -> str:
    """``image``, ``video`` or ``tabular``; an error for a path that is missing or of no
    known kind."""
    if source in BUILTIN_KINDS:
        return BUILTIN_KINDS[source]
    if is_shard_source(source) or is_image_parquet(source):
        return "image"
    path = Path(source)
    if path.is_dir():
        return "video" if is_clip_folder(path) else "image"
    if path.is_file() and is_table_file(path):
        return "tabular"
    if not path.exists():
        raise ResnetlabError(
            f"--data: no such file or directory: {source!r} "
            f"(built-in data sets: {', '.join(BUILTIN_DATASETS)})"
        )
    raise ResnetlabError(
        f"--data: {source!r} is neither an image folder, shards (.tar), image Parquet nor a "
        "table file (.csv, .tsv, .parquet)"
    )


def _check_image_options(image_size: int | None, in_chans: int | None) -> None:
    """Raise an error naming the flag unless ``image_size`` > 0 and ``in_chans`` is 1 or 3."""
    if image_size is not None and image_size < 1:
        raise ResnetlabError(f"--image-size must be a positive integer, got {image_size}")
    if in_chans not in (None, 1, 3):
        raise ResnetlabError(f"--in-chans must be 1 or 3 for images, got {in_chans}")
