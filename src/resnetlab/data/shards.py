"""Shards: an image set in WebDataset tar files, loaded as an image folder is.

``--data`` names shards as a folder of ``.tar`` files, a brace pattern such as
``train-{0000..0099}.tar``, or one ``.tar`` file. In a shard, the files of a sample share a key,
the member's path up to the first dot of its file name (WebDataset's rule): an image
(``key.jpg``, or ``jpeg``, ``png``, ``webp``, ``bmp``, ``gif``) and its class index in ASCII
(``key.cls``); other files are ignored. ``resnetlab pack`` (``data.pack``) writes shards with
``shards.json`` beside them: the class names and each shard's split, sample count, size and
sha256. Shards without one (made by the ``webdataset`` library, say) are one training set
whose classes are named by their indices.

A shard set is indexed first, from shards.json's list of each shard's members where ``pack``
wrote one (and the shard kept its size), else from its tar headers and labels: each sample
becomes an ``ArchiveMember`` (where its image's bytes lie) with its label. From there it is
loaded as an image folder is (``folder.image_bundle``): decoded once into the cache if it fits, else
streamed by ``shard_stream.ShardStream``. A damaged shard (cut short, an unreadable header,
missing, other samples than shards.json lists, samples without an image or a label) is named
in one warning line with the samples it loses, and its readable samples are used; ``--strict``
refuses it, and also checks each shard's size and sha256 against shards.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import relative_paths
from resnetlab.data.decode import ArchiveMember
from resnetlab.data.folder import ImageOptions, SampleSets, image_bundle
from resnetlab.data.shard_stream import ShardStream
from resnetlab.errors import ResnetlabError

INDEX_FILE = "shards.json"
INDEX_FORMAT = "resnetlab shards 1"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")  # the first one present is used
LABEL_SUFFIX = "cls"
_BRACES = re.compile(r"\{([^{}]*)\}")
_KEY = re.compile(r"^((?:.*/)?[^/.]+)\.([^/]*)$")  # webdataset's base_plus_ext
_ENTRY_FIELDS = {"file": str, "split": str, "samples": int, "bytes": int, "sha256": str}


def is_shard_source(source: str) -> bool:
    """Whether ``--data`` names shards: a folder holding shards.json or ``.tar`` files, a
    ``.tar`` file, or a brace pattern of them."""
    path = Path(source)
    if path.is_dir():
        return (path / INDEX_FILE).is_file() or any(path.glob("*.tar"))
    return path.suffix == ".tar" and (path.is_file() or _BRACES.search(source) is not None)


def expand_braces(pattern: str) -> list[str]:
    """Bash's brace expansion, as webdataset's ``braceexpand`` does it: ``a-{08..10}.tar`` is
    ``a-08.tar a-09.tar a-10.tar`` (zero-padded to the wider bound when a bound has a leading
    zero), ``{x,y}`` is ``x y``; several braces multiply."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds is None:
        words = body.split(",")
    else:
        first, last = bounds.groups()
        width = max(map(len, bounds.groups())) if "0" in (first[0], last[0]) else 0
        step = 1 if int(last) >= int(first) else -1
        words = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    return [name for word in words for name in expand_braces(head + word + tail)]


@dataclass
class ShardSet:
    """The shards that ``--data`` names: by split, the folder they lie in, and what their
    shards.json says (the class names, and each shard's entry by its name relative to
    ``root``), where they have one."""

    root: Path
    splits: dict[str, list[Path]]
    classes: list[str] | None = None
    listed: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_shards(source: str) -> ShardSet:
    """The shards of ``source``: a folder's shards.json lists them and their splits (without
    one, its ``.tar`` files, sorted, are the training set); a pattern or a file is a training
    set, with the classes of a shards.json beside it."""
    path = Path(source)
    if path.is_dir():
        index = read_index(path)
        if index is None:
            return ShardSet(path, {"train": sorted(path.glob("*.tar"))})
        splits: dict[str, list[Path]] = {}
        for entry in index["shards"]:
            splits.setdefault(entry["split"], []).append(path / entry["file"])
        if "train" not in splits:
            raise ResnetlabError(f"{path / INDEX_FILE}: lists no shard of the train split")
        listed = {entry["file"]: entry for entry in index["shards"]}
        return ShardSet(path, splits, index["classes"], listed)
    files = [Path(name) for name in dict.fromkeys(expand_braces(source))]
    if not any(file.is_file() for file in files):
        raise ResnetlabError(f"--data {source}: none of its {len(files)} shards exists")
    root = Path(os.path.commonpath([os.fspath(file.parent) for file in files]))
    index = read_index(root)
    if index is None:
        return ShardSet(root, {"train": files})
    listed = {entry["file"]: entry for entry in index["shards"]}
    return ShardSet(root, {"train": files}, index["classes"], listed)


def read_index(folder: Path) -> dict[str, Any] | None:
    """The shards.json in ``folder`` (None where there is none); one that ``resnetlab pack``
    did not write is an error naming it."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResnetlabError(f"{path}: cannot read it ({exc})") from None
    if not _is_index(index):
        raise ResnetlabError(
            f"{path}: not the index that resnetlab pack writes ({INDEX_FORMAT!r}: classes and "
            "shards, each with file, split, samples, bytes and sha256)"
        )
    return index


def _is_index(index: Any) -> bool:
    """Whether ``index`` has the shape of a shards.json."""
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return False
    classes, shards = index.get("classes"), index.get("shards")
    return (
        isinstance(classes, list)
        and all(isinstance(name, str) for name in classes)
        and isinstance(shards, list)
        and all(
            isinstance(entry, dict)
            and all(isinstance(entry.get(key), kind) for key, kind in _ENTRY_FIELDS.items())
            for entry in shards
        )
    )


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, suffix)`` of a member's name by webdataset's rule (the suffix lower-cased), or
    None for a name without a suffix."""
    match = _KEY.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


@dataclass
class ShardScan:
    """What one shard holds: its readable samples (the image member and the label), the keys
    of samples it cannot use and why, and why the shard itself cannot be read to its end."""

    samples: list[tuple[ArchiveMember, int]]
    unusable: list[tuple[str, str]]
    damage: str | None


def scan_shard(path: Path, num_classes: int | None = None) -> ShardScan:
    """Index the shard at ``path`` from its tar headers; read each sample's label. Members cut
    off by the end of the file, and all after an unreadable header, are lost (``damage``);
    samples of the shard without an image or a valid label (at most ``num_classes``, where
    known) are ``unusable``."""
    by_key, damage = _samples(path)
    samples, unusable = [], []
    with open(path, "rb") if by_key else nullcontext() as file:
        for key, members in by_key.items():
            image = _image(path, key, members)
            label, why = _label(file, members.get(LABEL_SUFFIX), num_classes)
            if image is None or label is None:
                unusable.append((key, why or f"no image ({', '.join(IMAGE_SUFFIXES)})"))
            else:
                samples.append((image, label))
    samples.sort(key=lambda sample: sample[0].name)
    return ShardScan(samples, unusable, damage)


def listed_scan(path: Path, entry: dict[str, Any] | None) -> ShardScan | None:
    """The shard at ``path`` as its shards.json entry lists it (``pack`` records each image
    member's name, offset, size and label: no tar header is read), where it does and the shard
    still has the size it was written with; else None (``scan_shard`` reads its headers)."""
    members = None if entry is None else entry.get("members")
    try:
        if not isinstance(members, list) or path.stat().st_size != entry["bytes"]:
            return None
        samples = [
            (ArchiveMember(path, name, offset, size, _KEY.match(name).group(1)), label)
            for name, offset, size, label in members
        ]
    except (OSError, TypeError, ValueError, AttributeError):  # missing, or not such a list
        return None
    return ShardScan(samples, [], None)


def shard_images(path: Path) -> tuple[list[ArchiveMember], str | None]:
    """Every sample's image in the shard at ``path``, labelled or not, in name order, and the
    damage that cut the listing short (as ``scan_shard``)."""
    by_key, damage = _samples(path)
    images = [_image(path, key, members) for key, members in by_key.items()]
    return sorted((i for i in images if i is not None), key=lambda i: i.name), damage


def _samples(path: Path) -> tuple[dict[str, dict[str, tarfile.TarInfo]], str | None]:
    """The members of each sample in the shard (by key, then suffix), and the damage."""
    try:
        infos, damage = _tar_members(path, path.stat().st_size)
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, tarfile.TarError) as exc:
        return {}, f"not a readable tar file ({exc})"
    by_key: dict[str, dict[str, tarfile.TarInfo]] = {}
    for info in infos:
        named = split_key(info.name)
        if named is not None:
            by_key.setdefault(named[0], {}).setdefault(named[1], info)
    return by_key, damage


def _image(path: Path, key: str, members: dict[str, tarfile.TarInfo]) -> ArchiveMember | None:
    """The sample's image (the first of ``IMAGE_SUFFIXES`` it has), or None."""
    image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
    if image is None:
        return None
    return ArchiveMember(path, image.name, image.offset_data, image.size, key)


def _tar_members(path: Path, size: int) -> tuple[list[tarfile.TarInfo], str | None]:
    """The shard's file members that lie wholly within its ``size`` bytes, and the damage that
    ended the listing early, if any."""
    infos: list[tarfile.TarInfo] = []
    with tarfile.open(path, "r:") as tar:
        try:
            for info in tar:
                if info.offset_data + info.size > size:
                    return infos, f"truncated, it ends inside {info.name}"
                if info.isfile():
                    infos.append(info)
        except tarfile.ReadError as exc:  # e.g. a header cut short
            return infos, f"damaged, {exc}"
        end = tar.offset
    with open(path, "rb") as file:  # a tar file ends with two zero blocks
        file.seek(end)
        tail = file.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE:
        return infos, "truncated, no end-of-archive marker"
    if tail.strip(b"\0"):
        return infos, f"damaged, an unreadable tar header at byte {end:,}"
    return infos, None


def _label(
    file: Any, member: tarfile.TarInfo | None, num_classes: int | None
) -> tuple[int | None, str | None]:
    """The class index in a ``.cls`` member, or None and why it is not one."""
    if member is None:
        return None, f"no .{LABEL_SUFFIX} label"
    file.seek(member.offset_data)
    text = file.read(member.size).decode("ascii", "replace").strip()
    if not text.isdigit():
        return None, f"label {text[:20]!r} is not a class index"
    if num_classes is not None and int(text) >= num_classes:
        return None, f"label {text} is not a class of the {num_classes} in {INDEX_FILE}"
    return int(text), None


def load_shards(
    source: str,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None = None,
    in_chans: int | None = None,
    options: ImageOptions,
) -> DataBundle:
    """Load a shard set (see the module docstring) as ``folder.image_bundle`` loads images:
    its val/test shards where shards.json has them, else val/test split off the training set
    and recorded by sample key."""
    if options.val_dir is not None or options.test_dir is not None:
        raise ResnetlabError(
            f"--val-dir/--test-dir take image folders; shards bring their own splits "
            f"({INDEX_FILE} of resnetlab pack of a folder with train/, val/, test/)"
        )
    classes, sets, where = shard_sets(source, options.strict)
    bundle = image_bundle(
        sets["train"][0].resolve().name, sets, classes, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, image_size=image_size, in_chans=in_chans,
        options=options, dataset_class=ShardStream,
    )  # fmt: skip
    return replace(bundle, pipeline=f"{where}; {bundle.pipeline}")


def shard_sets(source: str, strict: bool) -> tuple[list[str], SampleSets, str]:
    """The class names of the shards of ``source``, each split's folder and samples (indexed
    from the tar headers and labels: no image is read), and where they lie, in words. Damaged
    shards are reported (``strict``: refused)."""
    shards = find_shards(source)
    classes = shards.classes
    scans = {
        split: [
            listed_scan(path, shards.listed.get(relative_paths(shards.root, [path])[0]))
            or scan_shard(path, None if classes is None else len(classes))
            for path in paths
        ]
        for split, paths in shards.splits.items()
    }
    _report_damage(shards, scans, strict)
    sets: SampleSets = {}
    for split, split_scans in scans.items():
        samples = [sample for scan in split_scans for sample in scan.samples]
        if not samples and split == "train":
            raise ResnetlabError(f"--data {source}: no readable sample in its training shards")
        sets[split] = (shards.root, sorted(samples, key=lambda sample: os.fspath(sample[0])))
    if classes is None:
        labels = [label for _, samples in sets.values() for _, label in samples]
        classes = [str(label) for label in range(max(labels) + 1)]
    files = sum(map(len, shards.splits.values()))
    return classes, sets, f"{files} shard{'s' if files > 1 else ''} in {shards.root}"


def _report_damage(shards: ShardSet, scans: dict[str, list[ShardScan]], strict: bool) -> None:
    """One line per damaged shard: a warning (its readable samples are used), or with
    ``strict`` an error listing them all, where its size and sha256 are checked too."""
    lines = []
    for split, paths in shards.splits.items():
        for path, scan in zip(paths, scans[split], strict=True):
            entry = shards.listed.get(relative_paths(shards.root, [path])[0])
            line = _damage_line(path, scan, entry, strict)
            if line is not None:
                lines.append(line)
    if not lines:
        return
    if strict:
        raise ResnetlabError(f"{len(lines)} damaged shard(s) (--strict): {'; '.join(lines)}")
    for line in lines:
        print(f"resnetlab: warning: {line}; its readable samples are used", file=sys.stderr)


def _damage_line(
    path: Path, scan: ShardScan, entry: dict[str, Any] | None, strict: bool
) -> str | None:
    """What is wrong with one shard and what it costs, or None where nothing is."""
    problems = [] if scan.damage is None else [scan.damage]
    found = len(scan.samples) + len(scan.unusable)
    if entry is not None and scan.damage is None:
        if found != entry["samples"]:
            problems.append(f"{found:,} samples where {INDEX_FILE} lists {entry['samples']:,}")
        elif strict and _fingerprint(path) != (entry["bytes"], entry["sha256"]):
            problems.append(f"its size or sha256 differs from {INDEX_FILE}'s")
    if scan.unusable:
        key, why = scan.unusable[0]
        problems.append(f"{len(scan.unusable):,} sample(s) unusable (first: {key}: {why})")
    if not problems:
        return None
    readable = len(scan.samples)
    if entry is not None:
        lost = f"{max(entry['samples'] - readable, 0):,} of {entry['samples']:,} lost"
    elif scan.damage is not None:
        lost = f"how many were lost is unknown without {INDEX_FILE}"
    else:
        lost = f"{len(scan.unusable):,} lost"
    return f"{path}: {'; '.join(problems)}; {readable:,} readable samples, {lost}"


def _fingerprint(path: Path) -> tuple[int, str]:
    """The file's size and sha256."""
    with open(path, "rb") as file:
        return os.fstat(file.fileno()).st_size, hashlib.file_digest(file, "sha256").hexdigest()
