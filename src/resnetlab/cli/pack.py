"""`resnetlab pack`: a flag for each ``PackConfig`` field; the packing is ``data.pack``'s."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from resnetlab.cli.flags import add_settings, config_from_args
from resnetlab.errors import ResnetlabError
from resnetlab.settings import check_settings, setting

_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?", re.IGNORECASE)
_UNITS = {"": 1, **{p: 1000 ** (i + 1) for i, p in enumerate("kmgt")}}
_UNITS.update({f"{p}i": 1024 ** (i + 1) for i, p in enumerate("kmgt")})


def parse_size(text: str) -> int | None:
    """Bytes in a size such as ``256MB`` (10^6), ``1GiB`` (2^30) or ``4096``; None if ``text``
    is not one, or under a byte."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    return size if size >= 1 else None


@dataclass
class PackConfig:
    """Flags of `resnetlab pack` (free of torch, so that ``--help`` stays instant)."""

    folder: str = setting(
        positional=True,
        help="the image folder: FOLDER/<class>/* or FOLDER/{train,val,test}/<class>/*",
    )
    out: str | None = setting(
        None,
        metavar="OUT/",
        help="where to write the shards and shards.json, or the Parquet files (required)",
    )
    format: str = setting(
        "tar",
        choices=("tar", "parquet"),
        help="tar: WebDataset shards; parquet: image Parquet in the Hugging Face layout "
        "(default: %(default)s)",
    )
    shard_size: str = setting(
        "256MB",
        help="the largest shard, e.g. 256MB or 1GiB (a larger image gets a shard of its own); "
        "for Parquet, the images' bytes in each file (default: %(default)s)",
        check=lambda text: parse_size(text) is not None,
        error="{flag} must be a size such as 256MB or 1GiB (got {value!r})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "pack",
        help="write an image folder as WebDataset tar shards or image Parquet for --data",
        description="Write an image folder as WebDataset tar shards (key.jpg beside key.cls, "
        "the images' bytes unchanged) with shards.json: the class names, and each shard's "
        "split, samples, bytes, sha256 and members; or, with --format parquet, as image "
        "Parquet files in the Hugging Face layout (an image column of {bytes, path} structs, a "
        "label column, the class names in the schema's metadata).",
    )
    add_settings(p, PackConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    from resnetlab.data.pack import pack_folder

    cfg = config_from_args(PackConfig, args)
    check_settings(cfg)
    if cfg.out is None:
        raise ResnetlabError("pack needs --out, the folder to write the shards to")
    packed = pack_folder(cfg.folder, cfg.out, parse_size(cfg.shard_size) or 0, cfg.format)
    what = "shard(s)" if packed.index is not None else "Parquet file(s)"
    print(
        f"packed {cfg.folder}: {packed.samples:,} images of {len(packed.classes)} classes, "
        f"{packed.bytes / 1e6:,.1f} MB, in {len(packed.files)} {what} in {packed.out}"
    )
    for split in dict.fromkeys(entry["split"] for entry in packed.files):
        mine = [entry for entry in packed.files if entry["split"] == split]
        names = mine[0]["file"] + (f" .. {mine[-1]['file']}" if len(mine) > 1 else "")
        samples = sum(entry["samples"] for entry in mine)
        print(f"  {split}: {names}, {samples:,} samples")
    if packed.index is not None:
        print(f"  index: {packed.index}")
