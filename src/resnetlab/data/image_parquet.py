"""Image Parquet: a Parquet file, or a folder of them, whose column holds encoded images,
loaded as an image folder is.

The Hugging Face hub's layout: an image column of ``{"bytes", "path"}`` structs (the
``datasets`` library's ``Image`` feature) or of plain bytes, and a label column of integers
(class names in the file's ``huggingface`` metadata, a ``ClassLabel``, where it has them) or of
strings. A Parquet file is an image set when a column holds images: a struct with a binary
``bytes`` field, or a binary column whose first value is an image; every other one is a table
(``data.tabular``). ``--image-column`` names the column where several hold images;
``--target`` the label column (default: ``label``). A folder's ``train-*``, ``validation-*``
(or ``val-*``, ``valid-*``) and ``test-*`` files are its splits; without such names, all of its
files are the training set.

Each row's image becomes a ``ParquetCell`` (its file, row group and row), indexed from the
label and path columns alone: no image byte is read before training. From there it is loaded
as an image folder is (``folder.image_bundle``): decoded once into the cache if it fits, else
streamed by ``ParquetStream``, whose row groups take the part of ``shard_stream``'s shards.
Held-out rows are recorded by key: the image's path where every row has its own, else the
file's name and the row number. A cell that does not decode is a bad image file named
``file.parquet/column[row]``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from resnetlab.data.bundle import DataBundle
from resnetlab.data.decode import StoredImage
from resnetlab.data.folder import ImageOptions, Sample, SampleSets, image_bundle
from resnetlab.data.shard_stream import ShardStream
from resnetlab.data.tabular import require_pyarrow, sorted_classes
from resnetlab.errors import ResnetlabError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

SUFFIX = ".parquet"
DEFAULT_TARGET = "label"
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
HF_METADATA = b"huggingface"  # the schema metadata where the datasets library keeps features
_CACHED_GROUPS = 8  # row groups read last, kept: cells read one by one come mostly in row order
_SPLIT_PREFIX = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class ParquetCell(StoredImage):
    """The image of one row of a Parquet file: its row group, its row there, and the leaf
    column of its bytes (``image.bytes`` of a struct, or a binary column's name)."""

    archive: Path
    name: str  # column[row in the file], the row zero-padded so that names sort in row order
    group: int
    row: int  # in its row group
    field: str
    key: str

    def read(self) -> bytes:
        """Its bytes (none for a null cell)."""
        stamp = os.stat(self.archive).st_mtime_ns  # a file rewritten is read anew
        return group_images(self.archive, stamp, self.group, self.field)[self.row].as_py() or b""

    @property
    def place(self) -> str:
        return f"{self.field}:{self.group}:{self.row}"


@functools.lru_cache(maxsize=_CACHED_GROUPS)
def group_images(file: Path, stamp: int, group: int, field: str) -> pa.Array:
    """The column ``field`` of row group ``group`` of ``file`` (modified at ``stamp``): the
    images' bytes."""
    with _reading(file):
        table = _open(file).read_row_group(group, [field], use_threads=False)
        return table.flatten().column(0).combine_chunks()


class ParquetStream(ShardStream):
    """The rows of image Parquet files (``ParquetCell`` files), streamed as shards are, each
    row group standing for a shard (``shard_stream``)."""

    source = "Parquet row groups"

    @staticmethod
    def where(member: ParquetCell) -> tuple[Hashable, int]:
        """The row group that ``member`` lies in, and its row there."""
        return (member.archive, member.group), member.row

    @staticmethod
    def read_part(members: Sequence[ParquetCell]) -> Iterator[bytes]:
        """The bytes of ``members`` of one row group, which is read once."""
        return (member.read() for member in members)


def is_image_parquet(source: str) -> bool:
    """Whether ``source`` is image Parquet: a folder holding Parquet files (a table is one
    file), or a Parquet file with a column of images; not one that cannot be read (a table's
    reader then says why)."""
    path = Path(source)
    if path.is_dir():
        return any(path.glob(f"*{SUFFIX}"))
    if not (path.is_file() and path.suffix.lower() == SUFFIX):
        return False
    try:
        return bool(image_columns(path))
    except ResnetlabError:
        return False


def image_columns(file: Path) -> list[str]:
    """The columns of ``file`` that hold encoded images: structs with a binary ``bytes``
    field, and binary columns whose first value Pillow opens as an image."""
    schema = _schema(file)
    found = []
    for name in schema.names:
        kind = _image_kind(schema.field(name).type)
        if kind == "struct" or (kind == "binary" and _holds_an_image(file, name)):
            found.append(name)
    return found


def _image_kind(dtype: pa.DataType) -> str | None:
    """``struct`` for a struct with a binary ``bytes`` field, ``binary`` for a binary column,
    else None."""
    import pyarrow as pa

    if pa.types.is_struct(dtype):
        index = dtype.get_field_index("bytes")
        return "struct" if index >= 0 and _is_binary(dtype.field(index).type) else None
    return "binary" if _is_binary(dtype) else None


def _is_binary(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


def _holds_an_image(file: Path, column: str) -> bool:
    """Whether the first non-null value of the binary ``column`` opens as an image."""
    reader = _open(file)
    for group in range(reader.metadata.num_row_groups):
        with _reading(file):
            values = reader.read_row_group(group, [column], use_threads=False).column(0)
        values = values.drop_null()
        if len(values):
            try:
                Image.open(io.BytesIO(values[0].as_py())).close()
            except Exception:  # Pillow raises many types for what is no image
                return False
            return True
    return False


def _files(source: str) -> tuple[Path, dict[str, list[Path]]]:
    """The folder the Parquet files of ``source`` lie in, and the files by split."""
    path = Path(source)
    if path.is_file():
        return path.parent, {"train": [path]}
    by_split: dict[str | None, list[Path]] = {}
    for file in sorted(path.glob(f"*{SUFFIX}")):
        prefix = _SPLIT_PREFIX.match(file.name.lower())
        split = SPLIT_NAMES.get(prefix.group() if prefix else "")
        by_split.setdefault(split, []).append(file)
    if None in by_split and len(by_split) > 1:
        raise ResnetlabError(
            f"--data {source}: {by_split[None][0].name} belongs to no split beside the split "
            f"files ({', '.join(s for s in by_split if s)}): name it train-*, validation-* or "
            "test-*.parquet, or move it"
        )
    if None in by_split:
        return path, {"train": by_split[None]}
    if "train" not in by_split:
        raise ResnetlabError(f"--data {source}: no train-*.parquet beside its other split files")
    return path, {split: by_split[split] for split in ("train", "val", "test") if split in by_split}


@dataclass(frozen=True)
class Layout:
    """What every file of a set shares: the image column and the leaf of its bytes, the label
    column, its class names (from the metadata, where it names them), the leaf of the
    images' paths (None without one)."""

    column: str
    field: str
    target: str
    names: list[str] | None
    path_field: str | None


def find_layout(file: Path, image_column: str | None, target: str | None) -> Layout:
    """The image and label columns of ``file`` (one-line errors where they are absent, not
    images or labels, or where several columns hold images and none is named)."""
    schema = _schema(file)
    if image_column is None:
        found = image_columns(file)
        if len(found) > 1:
            raise ResnetlabError(
                f"{file}: several columns hold images ({', '.join(found)}); name one with "
                "--image-column"
            )
        if not found:
            raise ResnetlabError(f"{file}: no column holds encoded images")
        image_column = found[0]
    elif image_column not in schema.names:
        raise ResnetlabError(
            f"--image-column {image_column}: no such column in {file} "
            f"(columns: {', '.join(schema.names)})"
        )
    kind = _image_kind(schema.field(image_column).type)
    if kind is None:
        raise ResnetlabError(
            f"--image-column {image_column}: column {image_column!r} of {file} holds "
            f"{schema.field(image_column).type}, not encoded images (binary, or "
            "{bytes, path} structs)"
        )
    target = target or DEFAULT_TARGET
    if target not in schema.names or target == image_column:
        flag = "--target" if target != DEFAULT_TARGET else "--target (default: label)"
        others = ", ".join(name for name in schema.names if name != image_column)
        raise ResnetlabError(
            f"{flag}: no label column {target!r} in {file} (columns besides the images: "
            f"{others or 'none'})"
        )
    struct = schema.field(image_column).type
    paths = kind == "struct" and struct.get_field_index("path") >= 0
    return Layout(
        image_column,
        f"{image_column}.bytes" if kind == "struct" else image_column,
        target,
        _class_names(schema, target),
        f"{image_column}.path" if paths else None,
    )


def _class_names(schema: pa.Schema, target: str) -> list[str] | None:
    """The names of ``target``'s classes where the datasets library's metadata has them (a
    ``ClassLabel``)."""
    try:
        features = json.loads(schema.metadata[HF_METADATA])["info"]["features"]
        names = features[target]["names"] if features[target]["_type"] == "ClassLabel" else None
    except (TypeError, KeyError, ValueError):
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


@dataclass
class FileRows:
    """One file's rows: each one's row group and row in it, label value and image path."""

    file: Path
    groups: np.ndarray
    rows: np.ndarray
    labels: list[Any]
    paths: list[str | None]


def read_rows(file: Path, layout: Layout) -> FileRows:
    """The labels and image paths of ``file`` (its columns checked against ``layout``): the
    image bytes are not read."""
    reader = _open(file)
    for column in (layout.column, layout.target):
        if column not in reader.schema_arrow.names:
            raise ResnetlabError(f"{file}: no column {column!r}, which the set's first file has")
    leaves = [layout.target] + ([layout.path_field] if layout.path_field else [])
    with _reading(file):
        table = reader.read(leaves, use_threads=False).flatten()
    labels = _label_values(table.column(0), file, layout.target)
    meta = reader.metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.concatenate([np.arange(size) for size in sizes]) if sizes else np.empty(0, int)
    paths = table.column(1).to_pylist() if layout.path_field else [None] * len(labels)
    return FileRows(file, groups, rows, labels, paths)


def _label_values(column: pa.ChunkedArray, file: Path, target: str) -> list[Any]:
    """The label column as Python ints or strings (None where a row has none)."""
    import pyarrow as pa

    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column, dtype = column.cast(dtype.value_type), dtype.value_type
    if pa.types.is_integer(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return column.to_pylist()
    raise ResnetlabError(
        f"--target {target}: column {target!r} of {file} holds {dtype}; image labels are "
        "integers (class indices) or strings (class names)"
    )


def load_image_parquet(
    source: str,
    target: str | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None = None,
    in_chans: int | None = None,
    options: ImageOptions,
) -> DataBundle:
    """Load image Parquet (see the module docstring) as ``folder.image_bundle`` loads images:
    its val/test files where the folder has them, else val/test split off the training rows
    and recorded by row key."""
    if options.val_dir is not None or options.test_dir is not None:
        raise ResnetlabError(
            "--val-dir/--test-dir take image folders; a folder of Parquet files brings its own "
            "splits (validation-*.parquet, test-*.parquet)"
        )
    classes, sets, where = parquet_sets(source, target, options.image_column, options.strict)
    bundle = image_bundle(
        Path(source).resolve().name, sets, classes, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, image_size=image_size, in_chans=in_chans,
        options=options, dataset_class=ParquetStream,
    )  # fmt: skip
    return replace(bundle, pipeline=f"{where}; {bundle.pipeline}")


def parquet_sets(
    source: str, target: str | None, image_column: str | None, strict: bool
) -> tuple[list[str], SampleSets, str]:
    """The class names of the image Parquet ``source``, each split's folder and samples
    (``ParquetCell`` files, indexed from the label and path columns: no image is read), and
    where they lie, in words. Rows without a label are skipped with a warning (``strict``:
    refused)."""
    root, splits = _files(source)
    layout = find_layout(splits["train"][0], image_column, target)
    read = {split: [read_rows(file, layout) for file in files] for split, files in splits.items()}
    everything = [rows for files in read.values() for rows in files]
    classes, index = _classes(everything, layout)
    keyed = _paths_are_keys(everything)
    sets: SampleSets = {}
    unlabelled: list[str] = []
    for split, files in read.items():
        samples: list[Sample] = []
        for rows in files:
            width = len(str(max(len(rows.labels) - 1, 0)))
            for number, label in enumerate(rows.labels):
                name = f"{layout.column}[{number:0{width}d}]"
                if label is None or label not in index:
                    unlabelled.append(f"{rows.file}/{name}")
                    continue
                key = rows.paths[number] if keyed else f"{rows.file.name}:{number}"
                group, row = int(rows.groups[number]), int(rows.rows[number])
                cell = ParquetCell(rows.file, name, group, row, layout.field, key)
                samples.append((cell, index[label]))
        if not samples and split == "train":
            raise ResnetlabError(f"--data {source}: no labelled row in its training files")
        sets[split] = (root, samples)
    _report_unlabelled(unlabelled, layout.target, strict)
    files = sum(map(len, splits.values()))
    where = f"{files} Parquet file{'s' if files > 1 else ''} in {root} ({layout.column!r})"
    return classes, sets, where


def _classes(files: list[FileRows], layout: Layout) -> tuple[list[str], dict[Any, int]]:
    """The class names, and the class index of each label value: integers index the
    metadata's class names (else classes named by their indices); strings are class names,
    sorted. Negative integers (the datasets library's "no label") are no class."""
    values = {label for rows in files for label in rows.labels if label is not None}
    if any(isinstance(value, str) for value in values):
        classes = sorted_classes({str(value) for value in values})
        return classes, {name: i for i, name in enumerate(classes)}
    labels = [value for value in values if value >= 0]
    names = layout.names or [str(i) for i in range(max(labels, default=-1) + 1)]
    beyond = sorted(value for value in labels if value >= len(names))
    if beyond:
        raise ResnetlabError(
            f"--target {layout.target}: label {beyond[0]} is not a class of the {len(names)} "
            f"that {files[0].file}'s metadata names"
        )
    return names, {i: i for i in range(len(names))}


def _paths_are_keys(files: list[FileRows]) -> bool:
    """Whether every row has an image path of its own, to be its key."""
    paths = [path for rows in files for path in rows.paths]
    return None not in paths and len(set(paths)) == len(paths)


def _report_unlabelled(names: list[str], target: str, strict: bool) -> None:
    """One warning line for rows without a label (skipped); with ``strict`` an error."""
    if not names:
        return
    line = f"{len(names):,} row(s) without a label in {target!r} (the first: {names[0]})"
    if strict:
        raise ResnetlabError(f"{line} (--strict)")
    print(f"resnetlab: warning: {line}; they are skipped", file=sys.stderr)


def _schema(file: Path) -> pa.Schema:
    """The Arrow schema of ``file``."""
    return _open(file).schema_arrow


def _open(file: Path) -> pq.ParquetFile:
    """A reader of ``file``, whose footer it has read."""
    require_pyarrow(file)
    import pyarrow.parquet as pq

    with _reading(file):
        return pq.ParquetFile(file)


@contextmanager
def _reading(file: Path) -> Iterator[None]:
    """A one-line error naming ``file`` for whatever pyarrow raises on a damaged file."""
    try:
        yield
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResnetlabError(f"{file}: not a readable Parquet file ({reason})") from None
