"""Transfer on CIFAR-10: pretrain resnet20 on six classes, fine-tune on the other four.

Pretrains on airplane, automobile, ship, truck, frog and horse with `--recipe fast`; then, with
only 100 training images per class of bird, cat, deer and dog, compares training from scratch
(`train`'s defaults) with each fine-tuning strategy (`finetune`'s defaults) at the same epochs,
batch size and augmentation (4-pixel padded random crops and flips, He et al. 2015, sec. 4.2),
on 1,000 other images per class. Class subsets are folders of symbolic links in a fresh work folder.
Prints a Markdown table and writes JSON. Run from the repository root:

    .venv/bin/python benchmarks/finetune_transfer.py

A quick check of the pipeline: add --pretrain-per-class 50 --pretrain-epochs 1 --epochs 2
--train-per-class 10 --test-per-class 20 (`--smoke`: a few images per class, one strategy).
--pretrained FILE reuses an earlier pretraining.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import smoke

from resnetlab.config.finetune import STRATEGIES, FinetuneConfig
from resnetlab.config.recipes import recipe_defaults
from resnetlab.config.train import TrainConfig
from resnetlab.data.decode import is_image_file
from resnetlab.training.finetune import finetune
from resnetlab.training.run import TrainResult
from resnetlab.training.train import train

AUGMENT = {"crop_padding": 4, "flip": True}
PRETRAIN_CLASSES = ("airplane", "automobile", "ship", "truck", "frog", "horse")
TRANSFER_CLASSES = ("bird", "cat", "deer", "dog")


def link_subset(
    source: Path,
    target: Path,
    classes: tuple[str, ...],
    splits: dict[str, tuple[int, int]],
    seed: int,
) -> None:
    """``target/<split>/<class>/``: links to images ``[start, stop)`` of a seeded shuffle of
    each class folder of ``source``, so that the splits never share an image."""
    for name in classes:
        images = sorted(p for p in (source / name).iterdir() if is_image_file(p))
        random.Random(f"{seed}-{name}").shuffle(images)
        for split, (start, stop) in splits.items():
            if stop > len(images):
                raise SystemExit(f"{source / name}: {len(images)} images, {stop} needed")
            folder = target / split / name
            folder.mkdir(parents=True)
            for image in images[start:stop]:
                (folder / image.name).symlink_to(image.resolve())


def pretrain(args: argparse.Namespace, work: Path) -> str:
    """Train resnet20 on the six pretraining classes with the fast recipe (holding out 10% for
    validation); the path of its best checkpoint."""
    data = work / "pretrain"
    link_subset(
        Path(args.data), data, PRETRAIN_CLASSES, {"train": (0, args.pretrain_per_class)}, args.seed
    )
    settings = {
        **recipe_defaults("fast"),
        "recipe": "fast",
        "model": "resnet20",
        "data": str(data),
        "epochs": args.pretrain_epochs,
        "seed": args.seed,
        "out": str(work / "runs" / "pretrain"),
        "quiet": True,
    }
    cfg = TrainConfig(**settings)
    start = time.perf_counter()
    result = train(cfg)
    print(f"pretrained in {time.perf_counter() - start:.0f} s", flush=True)
    return str(result.run_dir / "best.safetensors")


def compare(args: argparse.Namespace, work: Path, weights: str) -> list[dict[str, object]]:
    """Scratch and every strategy on the transfer classes: test accuracy and time of each."""
    data = work / "transfer"
    n_train, n_test = args.train_per_class, args.test_per_class
    splits = {"train": (0, n_train), "test": (n_train, n_train + n_test)}
    link_subset(Path(args.data), data, TRANSFER_CLASSES, splits, args.seed)
    shared = {
        "data": str(data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "val_fraction": 0.0,  # every one of the few training images trains
        "seed": args.seed,
        "quiet": True,
        **AUGMENT,
    }
    runs: dict[str, Callable[[], TrainResult]] = {
        "from scratch": lambda: train(
            TrainConfig(model="resnet20", out=str(work / "runs" / "scratch"), **shared)
        )
    }
    for strategy in args.strategies:
        out = str(work / "runs" / strategy)
        runs[strategy] = lambda s=strategy, out=out: finetune(
            FinetuneConfig(weights=weights, strategy=s, out=out, **shared)
        )
    rows: list[dict[str, object]] = []
    for method, run in runs.items():
        start = time.perf_counter()
        result = run()
        assert result.test_report is not None
        accuracy, seconds = result.test_report["accuracy"], time.perf_counter() - start
        print(f"{method}: {accuracy:.1f}% in {seconds:.0f} s", flush=True)
        rows.append({"method": method, "accuracy": accuracy, "seconds": seconds})
    return rows


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Method, test accuracy, gain over the first row (scratch), time."""
    scratch = float(rows[0]["accuracy"])
    lines = ["| method | test accuracy | vs scratch | time |", "|---|---:|---:|---:|"]
    for row in rows:
        accuracy = float(row["accuracy"])
        lines.append(
            f"| {row['method']} | {accuracy:.1f}% | {accuracy - scratch:+.1f} "
            f"| {float(row['seconds']):.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10/train", help="CIFAR-10 folder")
    parser.add_argument("--work", default=f"benchmarks/results/finetune_transfer-{stamp}")
    parser.add_argument("--out", default="benchmarks/results/finetune_transfer.json")
    parser.add_argument("--pretrained", metavar="FILE", help="skip pretraining; use FILE")
    parser.add_argument("--pretrain-per-class", type=int, default=5000)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20, help="of every transfer run")
    parser.add_argument("--batch-size", type=int, default=64, help="of every transfer run")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seed", type=int, default=0)
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "work": str(folder / "work"), "out": str(folder / "finetune_transfer.json"),
            "pretrain_per_class": 4, "pretrain_epochs": 1, "train_per_class": 2,
            "test_per_class": 2, "epochs": 1, "batch_size": 8, "strategies": ["linear-probe"],
        },
    )  # fmt: skip
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)

    weights = args.pretrained or pretrain(args, work)
    rows = compare(args, work, weights)
    print(
        f"\nresnet20 pretrained on {', '.join(PRETRAIN_CLASSES)}; {args.train_per_class} "
        f"training images per class of {', '.join(TRANSFER_CLASSES)}, {args.epochs} epochs, "
        f"batch {args.batch_size}; test: {args.test_per_class} other images per class\n"
    )
    print(markdown_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": vars(args), "weights": weights, "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
