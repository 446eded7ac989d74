"""`resnetlab pack`: an image folder written as WebDataset tar shards, with shards.json.

Each image keeps its bytes (nothing is decoded or encoded again) as ``key.<its extension>``
beside ``key.cls``, its class index in ASCII; the key is the file's path in its class folders
without the extension (a dot left in the file name is written ``%2E``, since a key ends at the
first dot). Samples go in the folder's order (``scan_image_folder``: sorted by path), so a
packed set loads into the decoded-image cache as the same rows as its folder. A folder with
``train/``, ``val/``, ``test/`` gives ``train-*.tar``, ``val-*.tar``, ``test-*.tar``.

The tar members carry no time, owner or mode of the files, so the same folder packs into the
same bytes. Every shard is written to a temporary file and renamed, and shards.json (the class
names; each shard's split, samples, bytes and sha256) last: a folder with shards.json holds a
whole set.
"""

from __future__ import annotations

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
from resnetlab.data.shards import INDEX_FILE, INDEX_FORMAT, LABEL_SUFFIX
from resnetlab.errors import ResnetlabError
from resnetlab.files import writable_folder, write_atomically

T = TypeVar("T")
_BLOCK = tarfile.BLOCKSIZE
_END = 2 * _BLOCK  # the end-of-archive marker


@dataclass
class Packed:
    """What ``pack_folder`` wrote: the index (as in shards.json) and where."""

    out: Path
    index: dict[str, Any]

    @property
    def samples(self) -> int:
        return sum(entry["samples"] for entry in self.index["shards"])

    @property
    def bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.index["shards"])


def sample_key(relative: str) -> str:
    """The WebDataset key of an image at ``relative`` (its path under the class folders):
    the path without its extension, ``%`` and ``.`` in the file's name escaped."""
    folder, _, name = relative.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace("%", "%25").replace(".", "%2E")
    return f"{folder}/{stem}" if folder else stem


def pack_folder(folder: str | Path, out: str | Path, shard_bytes: int) -> Packed:
    """Write the image folder ``folder`` as shards of at most ``shard_bytes`` (a sample never
    spans two shards; a larger one gets a shard of its own) into ``out`` (absent or without
    shards) with shards.json."""
    root, out = Path(folder), Path(out)
    if not root.is_dir():
        raise ResnetlabError(f"pack: no such folder: '{folder}'")
    if out.resolve().is_relative_to(root.resolve()):
        raise ResnetlabError(f"--out {out}: inside the folder it packs ({root}); give another")
    if out.is_dir() and ((out / INDEX_FILE).exists() or any(out.glob("*.tar"))):
        raise ResnetlabError(f"--out {out}: already holds shards; give another --out")
    classes, sets = scan_splits(root, split_folders(root))
    writable_folder(out)
    entries = []
    for split, (split_root, split_samples) in sets.items():
        for number, chunk in enumerate(_chunks(split_root, split_samples, shard_bytes)):
            path = out / f"{split}-{number:06d}.tar"
            write_atomically(path, lambda file, chunk=chunk: _write_tar(file, chunk), "a shard")
            with open(path, "rb") as written:
                digest = hashlib.file_digest(written, "sha256").hexdigest()
            entry = {"file": path.name, "split": split, "samples": len(chunk)}
            entries.append({**entry, "bytes": path.stat().st_size, "sha256": digest})
    index = {"format": INDEX_FORMAT, "classes": classes, "shards": entries}
    text = json.dumps(index, indent=1) + "\n"
    write_atomically(out / INDEX_FILE, lambda file: file.write(text.encode()), "the index")
    return Packed(out, index)


Member = tuple[str, Path, int]  # (key, image file, label)


def _chunks(root: Path, samples: list[Sample], shard_bytes: int) -> list[list[Member]]:
    """``samples`` as the members of consecutive shards of at most ``shard_bytes`` each."""
    keys = [sample_key(rel) for rel in relative_paths(root, [path for path, _ in samples])]
    chunks: list[list[Member]] = [[]]
    used = _END
    for key, (path, label) in zip(keys, samples, strict=True):
        image = _member_bytes(f"{key}{path.suffix.lower()}", _reading(path, path.stat).st_size)
        size = image + _member_bytes(f"{key}.{LABEL_SUFFIX}", len(str(label)))
        if chunks[-1] and _padded(used + size) > shard_bytes:
            chunks.append([])
            used = _END
        chunks[-1].append((key, path, label))
        used += size
    return chunks


def _padded(size: int) -> int:
    """The size of a tar file of ``size`` bytes of members and end marker: whole records."""
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _member_bytes(name: str, size: int) -> int:
    """What a member of ``size`` bytes named ``name`` takes in a tar file: its header (and a
    PAX header for a name too long for one), its data in whole blocks."""
    header = _BLOCK if len(name.encode()) <= 100 else 3 * _BLOCK
    return header + -(-size // _BLOCK) * _BLOCK


def _write_tar(file: BinaryIO, members: list[Member]) -> None:
    """Write ``members`` as a tar file: ``key.ext`` with the image's bytes, ``key.cls``."""
    with tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, path, label in members:
            image = _reading(path, path.read_bytes)
            tar.addfile(_info(f"{key}{path.suffix.lower()}", len(image)), io.BytesIO(image))
            text = str(label).encode()
            tar.addfile(_info(f"{key}.{LABEL_SUFFIX}", len(text)), io.BytesIO(text))


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
