"""Image-data throughput: first decode, cache load, streaming loader, and data wait in training.

Prints a table and writes benchmarks/results/data_throughput.json. Run on an image folder
DIR/<class>/* (e.g. 50,000 CIFAR-10 JPEGs):
    .venv/bin/python benchmarks/data_throughput.py --data /path/to/cifar10/train
The first decode goes to a fresh temporary cache folder, deleted afterwards. `--smoke` measures
a few batches of 16x16 images, one decode thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import smoke
import torch
from torch.utils.data import DataLoader

from resnetlab.data.augment import BatchAugment
from resnetlab.data.cache import CachedImages, default_workers, load_or_build
from resnetlab.data.decode import is_image_file
from resnetlab.data.streaming import ImageFileDataset, train_transforms
from resnetlab.models import create_model
from resnetlab.runtime.precision import Precision, bf16_supported

P = ParamSpec("P")
T = TypeVar("T")


def scan(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted sub-folders), image files and their labels of ``root/<class>/*``."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if is_image_file(p))
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def streaming_images_per_s(
    files: list[Path], labels: list[int], size: int, workers: int, batch: int
) -> float:
    """Images/s of a DataLoader decoding ``files`` with the training transforms (after batch 1)."""
    dataset = ImageFileDataset(files, labels, transform=train_transforms(size))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    seen, start = 0, 0.0
    for i, (x, _) in enumerate(loader):
        if i == 0:  # worker start-up is not throughput
            start = time.perf_counter()
        else:
            seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def data_wait_fraction(data: CachedImages, batch: int, steps: int) -> dict[str, float]:
    """Seconds of data preparation (index, augment, to device) and of whole resnet20 steps."""
    torch.manual_seed(0)
    precision = Precision(torch.device("cpu"), torch.bfloat16, channels_last=True)
    model = precision.prepare(
        create_model("resnet20", num_classes=len(data.classes), in_chans=data.images.shape[1])
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    aug = BatchAugment(data.mean, data.std, cutout=8, seed=0)
    order = torch.randperm(data.images.shape[0])
    data_s = step_s = 0.0
    for step in range(steps + 2):
        start = time.perf_counter()
        idx = order[step * batch : (step + 1) * batch]
        x = precision.batch(aug(data.images[idx], idx))
        y = data.labels[idx]
        ready = time.perf_counter()
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 2:  # two warm-up steps
            data_s += ready - start
            step_s += time.perf_counter() - start
    return {"data_s": data_s, "step_s": step_s, "data_fraction": data_s / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="image folder DIR/<class>/*")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--stream-images",
        type=int,
        default=3200,
        help="files read by each streaming-loader measurement",
    )
    parser.add_argument("--out", default="benchmarks/results/data_throughput.json")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "size": 16, "workers": 1, "batch": 8, "steps": 1, "stream_images": 16,
            "out": str(folder / "data_throughput.json"),
        },
    )  # fmt: skip

    root = Path(args.data)
    (classes, files, labels), scan_s = timed(scan, root)
    with tempfile.TemporaryDirectory(prefix="resnetlab-bench-") as cache_dir:
        build = (root, files, labels, classes, 3, args.size, cache_dir, args.workers)
        data, decode_s = timed(load_or_build, *build)
        _, load_s = timed(load_or_build, *build)
    subset = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    stream_files = [files[i] for i in subset[: args.stream_images]]
    stream_labels = [labels[i] for i in subset[: args.stream_images]]
    streaming = {
        w: streaming_images_per_s(stream_files, stream_labels, args.size, w, args.batch)
        for w in (0, 2)
    }
    wait = data_wait_fraction(data, args.batch, args.steps)

    rows = [
        ("files", f"{len(files)} in {len(classes)} classes ({len(data.bad)} bad)"),
        ("scan", f"{scan_s:.2f} s"),
        (
            "first decode",
            f"{decode_s:.1f} s ({len(files) / decode_s:,.0f} images/s, {args.workers} threads)",
        ),
        ("cache load", f"{load_s:.2f} s"),
        *((f"streaming, {w} workers", f"{v:,.0f} images/s") for w, v in streaming.items()),
        ("resnet20 step (bf16, CL)", f"{1000 * wait['step_s'] / args.steps:.0f} ms"),
        ("waiting for data", f"{100 * wait['data_fraction']:.1f} % of the step"),
    ]
    for name, value in rows:
        print(f"{name:<26} {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "data": str(root),
                "files": len(files),
                "classes": len(classes),
                "bad": len(data.bad),
                "size": args.size,
                "decode_threads": args.workers,
                "scan_s": scan_s,
                "first_decode_s": decode_s,
                "first_decode_images_per_s": len(files) / decode_s,
                "cache_load_s": load_s,
                "mean": data.mean,
                "std": data.std,
                "streaming_images_per_s": {f"workers_{w}": v for w, v in streaming.items()},
                "train_step": {
                    "model": "resnet20",
                    "batch": args.batch,
                    "steps": args.steps,
                    "precision": "bf16 autocast, channels-last",
                    "bf16_native": bf16_supported(torch.device("cpu")),
                    **wait,
                },
                "cpu": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
