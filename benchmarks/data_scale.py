"""What loading image data costs at scale, against the decode limit.

A folder of generated JPEGs (20,000 by default, the shorter side 256 px, in 100 classes) is
packed as shards and as Parquet (resnetlab's own pack, 256 MB files), then read into training
batches at 224 px (RandomResizedCrop and flip) by DataLoaders with 2 workers:

- resnetlab's readers, as a run that streams builds them: the image folder, the shards, the
  Parquet files (each listed and indexed, then ``make_loader`` over its training samples; the
  mean/std sample a run also decodes before training is left out, the same for every format);
- torchvision's ``ImageFolder`` with a ``DataLoader``, written as a user would
  (RandomResizedCrop, flip, ToTensor; shuffled);
- the decode ceiling: decoding a JPEG and resizing it to 224 px alone, one after another in
  one process (one core), times the workers.

Each figure is the median of ``--repeats`` runs, with the lowest and highest: images/s after
the first batch over ``--batches`` batches, the seconds to list and open the data, and to the
first batch. Cold runs come after ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file of the
data (their pages only: the directory and inode caches stay warm; ``--drop-caches``, as root,
drops the whole machine's page, directory and inode caches instead; util-linux's ``fincore``,
where present, measures what is left in the cache); warm runs after every file was read once.
Beside them, each reader warm with no workers: this process's CPU time per image, which a
busy machine changes little. The folder and its packs are made once in ``--root`` (default:
``~/.cache/resnetlab/data-scale``) and reused.

    .venv/bin/python benchmarks/data_scale.py                 # some 10 minutes on 2 cores
    .venv/bin/python benchmarks/data_scale.py --images 5000   # a smaller folder

Prints a Markdown table and writes benchmarks/results/data_scale.json. `--smoke` runs through
all of it with 64 small images, one run each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import smoke
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from resnetlab.data.cache import default_cache_dir
from resnetlab.data.decode import is_image_file
from resnetlab.data.folder import Sample, scan_image_folder
from resnetlab.data.image_parquet import ParquetStream, parquet_sets
from resnetlab.data.pack import pack_folder
from resnetlab.data.shard_stream import ShardStream
from resnetlab.data.shards import shard_sets
from resnetlab.data.streaming import ImageFileDataset, train_transforms
from resnetlab.files import write_atomically
from resnetlab.runtime.matmul import cpu_name
from resnetlab.training.batches import BatchOrder, make_loader

PACK_BYTES = 256 * 10**6  # pack's default --shard-size
USER = "torchvision ImageFolder"
READERS = ("folder", "shards", "parquet", USER)
RECIPE_FILE = ".made"
SYSTEM_DROP = Path("/proc/sys/vm/drop_caches")


def generate(folder: Path, images: int, classes: int, side: int) -> bool:
    """``folder/cNNN/NNNNN.jpg``: ``images`` JPEGs (quality 90) in ``classes`` classes, the
    shorter side ``side`` px and the longer up to 1.5 times it, of smooth colour fields with
    noise (about 26 KB each at 256 px, as photos of that size); made once (``RECIPE_FILE``
    records how), written to a temporary folder and renamed. Whether it was made anew."""
    recipe = {"images": images, "classes": classes, "side": side}
    made = folder / RECIPE_FILE
    if made.is_file() and json.loads(made.read_text()) == recipe:
        return False
    if folder.exists() and not made.is_file():
        raise SystemExit(f"data_scale: {folder} exists but was not made here; give another --root")
    shutil.rmtree(folder, ignore_errors=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for i in range(images):
        rng = np.random.default_rng(i)
        width, height = int(rng.integers(side, side * 3 // 2 + 1)), side
        if rng.random() < 0.5:
            width, height = height, width
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), np.int16)
        noise = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
        pixels = np.clip(smooth + noise, 0, 255).astype(np.uint8)
        path = partial / f"c{i % classes:03d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
    (partial / RECIPE_FILE).write_text(json.dumps(recipe))
    partial.rename(folder)
    return True


def packed(folder: Path, out: Path, file_format: str) -> float:
    """Pack ``folder`` into ``out`` (once: into a temporary folder, then renamed); the seconds
    it took, or 0 where it was packed before."""
    if out.is_dir():
        return 0.0
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    pack_folder(folder, partial, PACK_BYTES, file_format)
    seconds = time.perf_counter() - start
    partial.rename(out)
    return seconds


@dataclass
class Reader:
    """A way to read the set: its data files (dropped from the page cache, or read warm), and
    what lists and opens it into a loader of training batches with a number of workers."""

    name: str
    files: list[Path]
    open: Callable[[int], Iterable[Any]]


def readers(root: Path, args: argparse.Namespace) -> list[Reader]:
    """The readers of ``READERS``, over the folder and its packs in ``root``."""
    folder, shards, parquet = root / "folder", root / "shards", root / "parquet"

    def streamed(
        dataset_class: type[ImageFileDataset], samples: list[Sample], workers: int
    ) -> Iterable[Any]:
        files, labels = zip(*samples, strict=True)
        transform = train_transforms(args.image_size)  # RandomResizedCrop + flip, as a run's
        dataset = dataset_class(files, labels, transform, 3, None)
        order = BatchOrder(len(dataset), args.batch, shuffle=True, seed=0, drop_last=True)
        order.set_epoch(1)
        return make_loader(dataset, order, workers=workers)

    def user(workers: int) -> DataLoader:  # as in torchvision's ImageNet example
        augment = T.Compose(
            [T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor()]
        )
        dataset = datasets.ImageFolder(str(folder), augment)
        return DataLoader(dataset, args.batch, shuffle=True, num_workers=workers, drop_last=True)

    images = sorted(path for path in folder.rglob("*") if is_image_file(path))
    return [
        Reader("folder", images, lambda workers: streamed(
            ImageFileDataset, scan_image_folder(folder)[1], workers)),
        Reader("shards", sorted(shards.iterdir()), lambda workers: streamed(
            ShardStream, shard_sets(str(shards), strict=False)[1]["train"][1], workers)),
        Reader("parquet", sorted(parquet.iterdir()), lambda workers: streamed(
            ParquetStream, parquet_sets(str(parquet), target=None, image_column=None,
                                        strict=False)[1]["train"][1], workers)),
        Reader(USER, images, user),
    ]  # fmt: skip


def drop_from_cache(files: list[Path], everything: bool) -> bool:
    """``posix_fadvise(POSIX_FADV_DONTNEED)`` on every one of ``files`` or, with
    ``everything``, the whole machine's page, directory and inode caches (``sync``, then 3 into
    ``SYSTEM_DROP``: root only): whether it could be done."""
    if everything:
        os.sync()
        try:
            SYSTEM_DROP.write_text("3\n")
        except OSError:
            return False
        return True
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def resident(files: list[Path]) -> float | None:
    """The share of ``files``' bytes in the page cache, by util-linux's ``fincore`` (a sample
    of 200 files at most); None without it."""
    sample = files[:: max(1, len(files) // 200)]
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, sample)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    pairs = [tuple(map(int, line.split())) for line in out.strip().splitlines()]
    return sum(res for res, _ in pairs) / max(1, sum(size for _, size in pairs))


def read_all(files: list[Path]) -> None:
    """Read every byte of ``files`` once: into the page cache."""
    for file in files:
        with open(file, "rb") as stream:
            while stream.read(1 << 22):
                pass


def one_run(reader: Reader, workers: int, batches: int, batch: int) -> dict[str, float]:
    """Seconds to list and open the data and to its first batch, and images/s after it (with
    no workers, also the milliseconds of this process's CPU time per image after it)."""
    start = time.perf_counter()
    loader = reader.open(workers)
    opened = time.perf_counter()
    stream = iter(loader)
    next(stream)
    first, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches - 1):
        next(stream)
    end, cpu = time.perf_counter(), time.process_time() - cpu
    del stream, loader  # the workers stop
    images = (batches - 1) * batch
    figures = {
        "open_s": opened - start,
        "first_batch_s": first - start,
        "images_per_s": images / max(end - first, 1e-9),
    }
    return figures | ({"cpu_ms_per_image": 1000 * cpu / images} if workers == 0 else {})


def decode_ceiling(files: list[Path], size: int, count: int) -> dict[str, float]:
    """Decoding JPEG bytes already in memory and resizing them to ``size`` x ``size``
    (bilinear), one after another in this process: one core's ceiling, in images/s, and in
    milliseconds of CPU time per image."""
    step = max(1, len(files) // count)
    data = [file.read_bytes() for file in files[::step][:count]]
    start, cpu = time.perf_counter(), time.process_time()
    for blob in data:
        with Image.open(io.BytesIO(blob)) as image:
            image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"images_per_s": len(data) / seconds, "cpu_ms_per_image": 1000 * cpu / len(data)}


def summary(values: list[float]) -> dict[str, Any]:
    """Median, lowest and highest of ``values``, and the values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}  # fmt: skip


def summaries(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure of ``runs`` summarised over them."""
    return {key: summary([run[key] for run in runs]) for key in runs[0]}


def measure(
    all_readers: list[Reader], args: argparse.Namespace
) -> tuple[dict[str, Any], bool, dict[str, float | None]]:
    """Run after run, each reader cold (where the cache can be dropped), warm, and warm in
    this process alone: each figure's summary, whether the cache could be dropped, and the
    share of each reader's files left in it after the last drop."""
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        reader.name: {"cold": [], "warm": [], "one_process": []} for reader in all_readers
    }
    dropped, left = True, {}
    for _ in range(args.repeats):
        for reader in all_readers:
            done = runs[reader.name]
            dropped = dropped and drop_from_cache(reader.files, args.drop_caches)
            if dropped:
                left[reader.name] = resident(reader.files)
                done["cold"].append(one_run(reader, args.workers, args.batches, args.batch))
            read_all(reader.files)
            done["warm"].append(one_run(reader, args.workers, args.batches, args.batch))
            done["one_process"].append(one_run(reader, 0, args.batches, args.batch))
    figures = {
        name: {state: summaries(done) if done else None for state, done in states.items()}
        for name, states in runs.items()
    }
    return figures, dropped, left


def targets(figures: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured: warm, each resnetlab reader within 10% of the user's
    ImageFolder loader or faster, and at 80% of the decode ceiling or more; cold, the first
    batch from shards and from Parquet 5 times sooner than from the folder, or more. Beside
    them, the same two warm ratios in CPU time per image in one process."""
    warm = {name: figures[name]["warm"]["images_per_s"]["median"] for name in figures}
    cpu = {name: figures[name]["one_process"]["cpu_ms_per_image"]["median"] for name in figures}
    limit = ceiling["images_per_s"]
    result: dict[str, Any] = {}
    for name in ("folder", "shards", "parquet"):
        result[name] = {
            "warm_vs_user": warm[name] / warm[USER],
            "warm_vs_user_met": warm[name] >= 0.9 * warm[USER],
            "warm_vs_ceiling": warm[name] / limit,
            "warm_vs_ceiling_met": warm[name] >= 0.8 * limit,
            "cpu_vs_user": cpu[USER] / cpu[name],
            "cpu_vs_ceiling": ceiling["cpu_ms_per_image"] / cpu[name],
        }
        if name != "folder" and figures[name]["cold"] is not None:
            first = {n: figures[n]["cold"]["first_batch_s"]["median"] for n in figures}
            sooner = first["folder"] / first[name]
            result[name] |= {
                "cold_first_batch_sooner": sooner,
                "cold_met": sooner >= 5,
                "cold_first_batch_sooner_than_user": first[USER] / first[name],
            }
    return result


def spread(figure: dict[str, Any] | None, key: str, digits: int) -> str:
    """``figure[key]``'s median (lowest-highest); n/a without it."""
    if figure is None:
        return "n/a"
    low, median, high = (f"{figure[key][k]:,.{digits}f}" for k in ("min", "median", "max"))
    return f"{median} ({low}-{high})"


def table(figures: dict[str, Any], ceiling: dict[str, Any], workers: int) -> list[str]:
    """The Markdown table of the results."""
    lines = [
        "| reader | warm images/s | cold images/s | list+open s, cold / warm "
        "| first batch s, cold / warm | CPU ms/image, one process |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, states in figures.items():
        cold, warm = states["cold"], states["warm"]
        lines.append(
            f"| {name} | {spread(warm, 'images_per_s', 0)} | {spread(cold, 'images_per_s', 0)} "
            f"| {spread(cold, 'open_s', 2)} / {spread(warm, 'open_s', 2)} "
            f"| {spread(cold, 'first_batch_s', 2)} / {spread(warm, 'first_batch_s', 2)} "
            f"| {spread(states['one_process'], 'cpu_ms_per_image', 2)} |"
        )
    per_core = ceiling["per_core"]
    lines.append(
        f"| decode ceiling (decode + resize: {spread(per_core, 'images_per_s', 0)}/s per core "
        f"x {workers}) | {ceiling['images_per_s']:,.0f} | | | "
        f"| {spread(per_core, 'cpu_ms_per_image', 2)} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=str(Path(default_cache_dir()).expanduser() / "data-scale"),
        help="where the folder and its packs are made once and kept (default: %(default)s)",
    )
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--side", type=int, default=256, help="the images' shorter side")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50, help="batches read by each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceiling-images", type=int, default=500)
    parser.add_argument(
        "--drop-caches", action="store_true",
        help=f"cold runs after dropping the whole machine's caches ({SYSTEM_DROP}: root only) "
        "instead of the data files' pages",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/data_scale.json")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "root": str(folder / "root"), "images": 64, "classes": 2, "side": 40,
            "image_size": 32, "batch": 8, "batches": 3, "repeats": 1, "ceiling_images": 8,
            "out": str(folder / "data_scale.json"),
        },
    )  # fmt: skip
    root = Path(args.root)
    load_before = os.getloadavg()
    start = time.perf_counter()
    if generate(root / "folder", args.images, args.classes, args.side):
        for name in ("shards", "parquet"):  # packs of an earlier folder
            shutil.rmtree(root / name, ignore_errors=True)
    generate_s = time.perf_counter() - start
    pack_s = {fmt: packed(root / "folder", root / name, fmt)
              for name, fmt in (("shards", "tar"), ("parquet", "parquet"))}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: the ceiling's and the one-process runs'
    try:
        all_readers = readers(root, args)
        runs = [decode_ceiling(all_readers[0].files, args.image_size, args.ceiling_images)
                for _ in range(args.repeats)]  # fmt: skip
        figures, dropped, left = measure(all_readers, args)
    finally:
        torch.set_num_threads(threads)
    per_core = summaries(runs)
    ceiling = {
        "per_core": per_core,
        "images_per_s": per_core["images_per_s"]["median"] * max(args.workers, 1),
        "cpu_ms_per_image": per_core["cpu_ms_per_image"]["median"],
    }
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "root": str(root),
        "images": args.images,
        "classes": args.classes,
        "shorter_side": args.side,
        "image_size": args.image_size,
        "workers": args.workers,
        "batch": args.batch,
        "batches_per_run": args.batches,
        "repeats": args.repeats,
        "cache_drop": {
            "how": f"{SYSTEM_DROP} (the machine's page, directory and inode caches)"
            if args.drop_caches
            else "posix_fadvise(POSIX_FADV_DONTNEED) on every data file before each cold run "
            "(their pages only: the directory and inode caches stay warm)",
            "possible": dropped,
            "resident_after_drop": left,
        },
        "formats": {
            reader.name: {
                "files": len(reader.files),
                "bytes": sum(file.stat().st_size for file in reader.files),
            }
            for reader in all_readers[:3]
        },
        "made_s": {"generate": generate_s, **pack_s},
        "decode_ceiling": ceiling,
        "readers": figures,
        "targets": targets(figures, ceiling),
    }
    cold = "cold: page cache dropped per file" if dropped else "cold: not possible here"
    print(f"{cpu_name()}, {args.workers} workers, {args.images:,} images, {cold}")
    print("\n".join(table(figures, ceiling, max(args.workers, 1))))
    print(json.dumps(result["targets"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(out, lambda file: file.write(text.encode()), "the results")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
