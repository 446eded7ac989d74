"""`resnetlab pack`: an image folder written as WebDataset tar shards, with shards.json, or as
image Parquet files.

Each image keeps its bytes (nothing is decoded or encoded again) as ``key.<its extension>``
beside ``key.cls``, its class index in ASCII; the key is the file's path in its class folders
without the extension (a dot left in the file name is written ``%2E``, since a key ends at the
first dot). Samples go in the folder's order (``scan_image_folder``: sorted by path), so a
packed set loads into the decoded-image cache as the same rows as its folder. A folder with
``train/``, ``val/``, ``test/`` gives ``train-*.tar``, ``val-*.tar``, ``test-*.tar``.

The tar members carry no time, owner or mode of the files, so the same folder packs into the
same bytes. Every shard is written to a temporary file and renamed, and shards.json (the class
names; each shard's split, samples, bytes, sha256 and members: each image's name, offset, size
and label) last: a folder with shards.json holds a
whole set.

As Parquet (``file_format="parquet"``), the files are in the Hugging Face hub's layout: an
``image`` column of ``{"bytes", "path"}`` structs (the path relative to the class folders) and
a ``label`` column of class indices, whose names the ``huggingface`` schema metadata holds (the
``datasets`` library's ``Image`` and ``ClassLabel`` features), in row groups of
``PARQUET_ROW_GROUP`` rows, uncompressed (image files are compressed already), named
``train-00000-of-00002.parquet`` (``validation-*``, ``test-*``), each written to a temporary
file and renamed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from resnetlab.data.cache import relative_paths
from resnetlab.data.folder import Sample, scan_splits, split_folders
from resnetlab.data.image_parquet import HF_METADATA, SUFFIX
from resnetlab.data.shards import INDEX_FILE, INDEX_FORMAT, LABEL_SUFFIX
from resnetlab.data.tabular import require_pyarrow
from resnetlab.errors import ResnetlabError
from resnetlab.files import writable_folder, write_atomically

T = TypeVar("T")
PARQUET_ROW_GROUP = 100  # rows: the datasets library's row groups for image sets
PARQUET_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # the hub's names
_BLOCK = tarfile.BLOCKSIZE
_END = 2 * _BLOCK  # the end-of-archive marker


@dataclass
class Packed:
    """What ``pack_folder`` wrote, where: the class names, each file's entry (as in
    shards.json: file, split, samples, bytes, sha256), and the index (shards.json; None for
    Parquet, whose files name their classes)."""

    out: Path
    classes: list[str]
    files: list[dict[str, Any]]
    index: Path | None

    @property
    def samples(self) -> int:
        return sum(entry["samples"] for entry in self.files)

    @property
    def bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.files)


def sample_key(relative: str) -> str:
    """The WebDataset key of an image at ``relative`` (its path under the class folders):
    the path without its extension, ``%`` and ``.`` in the file's name escaped."""
    folder, _, name = relative.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace("%", "%25").replace(".", "%2E")
    return f"{folder}/{stem}" if folder else stem


def pack_folder(
    folder: str | Path, out: str | Path, shard_bytes: int, file_format: str = "tar"
) -> Packed:
    """Write the image folder ``folder`` into ``out`` (absent, or without shards or Parquet
    files) as shards of at most ``shard_bytes`` (a sample never spans two shards; a larger one
    gets a shard of its own) with shards.json, or as Parquet files of about ``shard_bytes`` of
    images each (``file_format`` ``parquet``)."""
    root, out = Path(folder), Path(out)
    if not root.is_dir():
        raise ResnetlabError(f"pack: no such folder: '{folder}'")
    if out.resolve().is_relative_to(root.resolve()):
        raise ResnetlabError(f"--out {out}: inside the folder it packs ({root}); give another")
    if out.is_dir() and (
        (out / INDEX_FILE).exists() or any(out.glob("*.tar")) or any(out.glob(f"*{SUFFIX}"))
    ):
        raise ResnetlabError(f"--out {out}: already holds shards or Parquet files; give another")
    parquet = file_format == "parquet"
    if parquet:
        require_pyarrow(out)
    classes, sets = scan_splits(root, split_folders(root))
    writable_folder(out)
    entries = []
    for split, (split_root, samples) in sets.items():
        chunks = _split_chunks(split_root, samples, shard_bytes, parquet)
        for number, chunk in enumerate(chunks):
            if parquet:
                path = out / f"{PARQUET_SPLITS[split]}-{number:05d}-of-{len(chunks):05d}{SUFFIX}"
                write = functools.partial(_write_parquet, members=chunk, classes=classes)
            else:
                path = out / f"{split}-{number:06d}.tar"
                listed: list[list[Any]] = []
                write = functools.partial(_write_tar, members=chunk, listed=listed)
            write_atomically(path, write, "a Parquet file" if parquet else "a shard")
            with open(path, "rb") as written:
                digest = hashlib.file_digest(written, "sha256").hexdigest()
            entry = {"file": path.name, "split": split, "samples": len(chunk)}
            entry |= {"bytes": path.stat().st_size, "sha256": digest}
            if not parquet:  # where each image lies: a run lists the shard without its headers
                entry["members"] = sorted(listed)
            entries.append(entry)
    if parquet:
        return Packed(out, classes, entries, None)
    index = {"format": INDEX_FORMAT, "classes": classes, "shards": entries}
    text = json.dumps(index, separators=(",", ":")) + "\n"  # 20,000 members: 1 MB
    write_atomically(out / INDEX_FILE, lambda file: file.write(text.encode()), "the index")
    return Packed(out, classes, entries, out / INDEX_FILE)


Member = tuple[str, Path, int]  # (key, image file, label); in Parquet the key is its path


def _split_chunks(
    root: Path, samples: list[Sample], shard_bytes: int, parquet: bool
) -> list[list[Member]]:
    """A split's samples (in ``root``) as the members of its files: consecutive shards of at
    most ``shard_bytes``, or Parquet files of about ``shard_bytes`` of images."""
    names = relative_paths(root, [path for path, _ in samples])
    if parquet:
        members = [(name, path, label) for name, (path, label) in zip(names, samples, strict=True)]
        sizes = [_reading(path, path.stat).st_size for _, path, _ in members]
        return _chunks(members, sizes, shard_bytes, lambda used: used)
    keys = [sample_key(name) for name in names]
    members = [(key, path, label) for key, (path, label) in zip(keys, samples, strict=True)]
    sizes = [_tar_bytes(key, path, label) for key, path, label in members]
    return _chunks(members, sizes, shard_bytes, lambda used: _padded(_END + used))


def _chunks(
    members: list[Member], sizes: list[int], limit: int, whole: Callable[[int], int]
) -> list[list[Member]]:
    """``members`` (of ``sizes`` bytes each) in consecutive chunks whose ``whole`` (the size
    of a file of the members' bytes) stays within ``limit``, but for a member larger alone."""
    chunks: list[list[Member]] = [[]]
    used = 0
    for member, size in zip(members, sizes, strict=True):
        if chunks[-1] and whole(used + size) > limit:
            chunks.append([])
            used = 0
        chunks[-1].append(member)
        used += size
    return chunks


def _tar_bytes(key: str, path: Path, label: int) -> int:
    """What a sample takes in a shard: its image's member and its label's."""
    image = _member_bytes(f"{key}{path.suffix.lower()}", _reading(path, path.stat).st_size)
    return image + _member_bytes(f"{key}.{LABEL_SUFFIX}", len(str(label)))


def _padded(size: int) -> int:
    """The size of a tar file of ``size`` bytes of members and end marker: whole records."""
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _member_bytes(name: str, size: int) -> int:
    """What a member of ``size`` bytes named ``name`` takes in a tar file: its header (and a
    PAX header for a name too long for one), its data in whole blocks."""
    header = _BLOCK if len(name.encode()) <= 100 else 3 * _BLOCK
    return header + _in_blocks(size)


def _in_blocks(size: int) -> int:
    """What ``size`` bytes of a member's data take in a tar file: whole 512-byte blocks."""
    return -(-size // _BLOCK) * _BLOCK


def _write_tar(file: BinaryIO, members: list[Member], listed: list[list[Any]]) -> None:
    """Write ``members`` as a tar file: ``key.ext`` with the image's bytes, ``key.cls``; add
    ``[name, offset, size, label]`` of each image member to ``listed``."""
    with tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, path, label in members:
            image = _reading(path, path.read_bytes)
            name = f"{key}{path.suffix.lower()}"
            tar.addfile(_info(name, len(image)), io.BytesIO(image))
            # the image's data ends, padded to whole blocks, where the tar file now ends
            listed.append([name, tar.offset - _in_blocks(len(image)), len(image), label])
            text = str(label).encode()
            tar.addfile(_info(f"{key}.{LABEL_SUFFIX}", len(text)), io.BytesIO(text))


def _write_parquet(file: BinaryIO, members: list[Member], classes: list[str]) -> None:
    """Write ``members`` as an image Parquet file in the hub's layout (the module docstring),
    ``PARQUET_ROW_GROUP`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    metadata = {HF_METADATA: json.dumps({"info": {"features": features}})}
    schema = pa.schema([("image", image), ("label", pa.int64())], metadata=metadata)
    with pq.ParquetWriter(
        file, schema, compression="none", use_dictionary=False, write_statistics=False
    ) as writer:
        for start in range(0, len(members), PARQUET_ROW_GROUP):
            rows = members[start : start + PARQUET_ROW_GROUP]
            images = [{"bytes": _reading(p, p.read_bytes), "path": key} for key, p, _ in rows]
            columns = [pa.array(images, image), pa.array([label for *_, label in rows], pa.int64())]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def _reading(path: Path, read: Callable[[], T]) -> T:
    """``read()`` of the image file at ``path``; an error naming it where it cannot be read."""
    try:
        return read()
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot read it ({exc.strerror})") from None


def _info(name: str, size: int) -> tarfile.TarInfo:
    """A member's header with nothing of the machine it was written on."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    return info
