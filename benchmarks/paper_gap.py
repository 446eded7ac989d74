"""Where do resnet20's points go? The paper recipe's gap (87.8% here, 91.25% in He et al. 2015)
measured with a short protocol, one factor at a time.

Protocol: resnet20, ``--recipe paper`` in fp32 (or ``--precision bf16``, where it is native and
checked against fp32 by the ``bf16`` factor) shortened to ``--epochs`` (default 40; the lr
still drops at 50% and 75% of the run), 45k/5k split, seeds 0 and 1; the score is the
validation accuracy after the last epoch (the paper reports its final network, not the best
epoch). A flag a factor adds comes after the protocol's, so it wins.
Each factor changes one thing against ``baseline``:

    python benchmarks/paper_gap.py --factors baseline jpeg50 --seeds 0 1
    python benchmarks/paper_gap.py --report          # the table from the runs so far
    python benchmarks/paper_gap.py --smoke --data DIR    # baseline and jpeg50, 1 epoch, seed 0

A run that stops (crash, end of a session) is resumed bit for bit on the next call
(`resnetlab train --resume`); finished runs are skipped. JPEG factors re-encode the folder
once (PIL, the given quality, 4:2:0 chroma as the original) into ``--out``, and ``chroma8``
cuts its colour planes from 4:2:0's 16x16 to 8x8 (stored as PNG). The accuracy at
``--source-quality`` (the folder as it is: 75 for the shared CIFAR-10 copy), 50, 30 and 15 is
extrapolated to lossless by three lines: against the quality (to 100), the quantiser scale (to
0) and each folder's estimated error against the lost lossless images (jpeg_distortion.py; to
0).
Runs and results (paper_gap.json, paper_gap.md) go to ``--out``/e``EPOCHS``/. Every finished
run's score is also kept in ``--ledger`` (paper_gap_runs.json beside this script, committed), so
the table outlives the machine that ran it; a factor is compared with the baseline of the same
seed on the same machine, the CPU named with whether it has native bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import smoke
import torch
from jpeg_distortion import against_lossless
from PIL import Image
from sklearn.model_selection import train_test_split

from resnetlab.bench.hardware import machine_name
from resnetlab.checkpoints.checkpoint import read_header
from resnetlab.checkpoints.state import STATE_FILE
from resnetlab.config.recipes import RECIPES
from resnetlab.data.cache import relative_paths
from resnetlab.data.folder import scan_image_folder
from resnetlab.data.splits import SplitIndices, record_split, split_indices
from resnetlab.files import write_atomically
from resnetlab.runtime.precision import bf16_supported

PAPER = RECIPES["paper"]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train"
LEDGER = Path(__file__).with_name("paper_gap_runs.json")


@dataclass(frozen=True)
class Factor:
    """One change against the baseline protocol."""

    what: str
    flags: tuple[str, ...] = ()
    quality: int | None = None  # re-encode the folder at this JPEG quality
    chroma: int | None = None  # cut the folder's colour planes to this size, stored losslessly
    train_images: int | None = None  # train on this many of the baseline's training images


FACTORS = {
    "baseline": Factor("the paper recipe, shortened"),
    "bf16": Factor("bf16 autocast (a CPU with native bf16, or a GPU)", ("--precision", "bf16")),
    "train40k": Factor(
        "40k of the 45k training images, as many steps, the same 5k validation",
        train_images=40_000,
    ),
    "jpeg50": Factor("the folder re-encoded at JPEG quality 50", quality=50),
    "jpeg30": Factor("the folder re-encoded at JPEG quality 30", quality=30),
    "jpeg15": Factor("the folder re-encoded at JPEG quality 15", quality=15),
    "chroma8": Factor(
        "the colour planes cut from JPEG's 16x16 to 8x8 (stored as PNG)", chroma=8
    ),
    "no-bn-decay": Factor("no weight decay on BN and biases", ("--no-decay-norm-and-bias",)),
    "reflect-pad": Factor("crops from reflect-padded images", ("--padding-mode", "reflect")),
    "cosine": Factor(
        "a cosine schedule instead of the steps at 50% and 75%", ("--schedule", "cosine")
    ),
    "zero-init": Factor(
        "residual branches start at zero", ("--model-option", "zero_init_residual=true")
    ),
}  # fmt: skip


def reencoded(source: Path, quality: int, out: Path) -> Path:
    """``source`` re-encoded at JPEG ``quality`` (4:2:0, as the original) under ``out``."""

    def save(image: Image.Image, dest: Path) -> None:
        image.save(dest.with_suffix(".jpg"), quality=quality, subsampling="4:2:0")

    return derived(source, out / f"data-q{quality}", save)


def chroma_cut(source: Path, size: int, out: Path) -> Path:
    """``source`` with its colour planes (Cb, Cr) box-averaged to ``size`` x ``size`` and
    stretched back bilinearly (as a JPEG decoder does 4:2:0's), the brightness untouched; stored
    as PNG (the colour conversion rounds by a level). What losing half of the colour detail
    that 4:2:0 keeps costs hints at what the detail 4:2:0 removed was worth."""

    def save(image: Image.Image, dest: Path) -> None:
        luma, *colour = image.convert("YCbCr").split()
        colour = [c.resize((size, size), Image.BOX).resize(c.size, Image.BILINEAR) for c in colour]
        Image.merge("YCbCr", (luma, *colour)).convert("RGB").save(dest.with_suffix(".png"))

    return derived(source, out / f"data-chroma{size}", save)


def derived(source: Path, target: Path, save: Callable[[Image.Image, Path], None]) -> Path:
    """``target``: every image of ``source`` in RGB, written by ``save`` under its relative
    path (made once, renamed into place when complete)."""
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a stopped call left
    for path in sorted(source.rglob("*")):
        if path.is_file():
            dest = partial / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                save(image.convert("RGB"), dest)
    partial.rename(target)
    return target


def protocol_dir(args: argparse.Namespace) -> Path:
    """Where the runs and results of the ``--epochs``-long protocol in ``--precision`` live."""
    return args.out / f"e{args.epochs}{'' if args.precision == 'fp32' else '-' + args.precision}"


def run_dir(args: argparse.Namespace, factor: str, seed: int) -> Path:
    return protocol_dir(args) / f"{factor}-seed{seed}"


def finished(path: Path) -> bool:
    return (path / "confusion.json").exists()


def machine() -> str:
    """This CPU as the ledger names it: its model and whether bf16 is native (two machines
    both called "AMD EPYC" differ in that, and in their speed)."""
    cpu = torch.device("cpu")
    return f"{machine_name(cpu)}, {'native' if bf16_supported(cpu) else 'no native'} bf16"


def read_ledger(args: argparse.Namespace) -> list[dict]:
    """Every finished run recorded so far, of any length and machine."""
    return json.loads(args.ledger.read_text()) if args.ledger.exists() else []


def recorded(args: argparse.Namespace, factor: str, seed: int) -> bool:
    """Whether this machine has already finished the run."""
    key = {"epochs": args.epochs, "precision": args.precision, "factor": factor, "seed": seed}
    key["machine"] = machine()
    return any(entry | key == entry for entry in read_ledger(args))


def record(args: argparse.Namespace, factor: str, seed: int) -> None:
    """Add a finished run's score to the ledger."""
    entry = {
        "epochs": args.epochs, "precision": args.precision, "factor": factor, "seed": seed,
        "machine": machine(),
        "val_acc": final_accuracy(run_dir(args, factor, seed)), "torch": torch.__version__,
    }  # fmt: skip
    ledger = [*read_ledger(args), entry]
    write_atomically(
        args.ledger, lambda f: f.write(json.dumps(ledger, indent=1).encode()), "the ledger"
    )


def train(factor: str, seed: int, args: argparse.Namespace) -> None:
    """Start, resume or skip one run; record it in the ledger once finished."""
    if recorded(args, factor, seed):
        return
    path = run_dir(args, factor, seed)
    if finished(path):
        record(args, factor, seed)
        return
    command = [sys.executable, "-m", "resnetlab", "train"]
    if (path / STATE_FILE).exists():
        command += ["--resume", str(path)]
    else:
        spec = FACTORS[factor]
        data = args.data
        if spec.quality:
            data = reencoded(args.data, spec.quality, args.out)
        if spec.chroma:
            data = chroma_cut(args.data, spec.chroma, args.out)
        length = ["--epochs", str(args.epochs)]
        if spec.train_images:
            data, length = fewer_training_images(args, seed, spec.train_images)
        command += [
            "--model", "resnet20", "--data", str(data), "--recipe", "paper", *length,
            "--seed", str(seed), "--precision", args.precision, "--out", str(path), "--quiet",
            "--overwrite",  # what a run that failed before its first state left
            *spec.flags,
        ]  # fmt: skip
    print(" ".join(command), flush=True)
    if code := subprocess.run(command).returncode:
        sys.exit(f"paper_gap: run {path} stopped with exit code {code} (its message is above)")
    record(args, factor, seed)


def fewer_training_images(
    args: argparse.Namespace, seed: int, count: int
) -> tuple[Path, list[str]]:
    """A folder of ``train/`` (``count`` of the images the baseline of ``seed`` trains on,
    stratified) and ``val/`` (the baseline's own validation images), made once of symbolic
    links; and the flags that train on it for as many steps as the baseline (the paper fixes
    the iterations, 64k, not the epochs)."""
    target = args.out / f"data-train{count}-seed{seed}"
    classes, samples = scan_image_folder(args.data)
    labels = np.array([label for _, label in samples])
    split = split_indices(
        labels, val_fraction=PAPER["val_fraction"], test_fraction=0.0, seed=seed,
        class_names=classes,
    )  # fmt: skip
    check_baseline_split(args, seed, [path for path, _ in samples], split)
    steps = math.ceil(len(split.train) / PAPER["batch_size"]) * args.epochs
    epochs = math.ceil(steps / math.ceil(count / PAPER["batch_size"]))
    length = ["--epochs", str(epochs), "--limit-steps", str(steps)]
    if target.exists():
        return target, length
    keep, _ = train_test_split(
        split.train, train_size=count, stratify=labels[split.train], random_state=seed
    )
    partial = args.out / f"data-train{count}-seed{seed}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what a stopped call left
    for folder, indices in (("train", keep), ("val", split.val)):
        for index in indices:
            source = samples[index][0]
            link = partial / folder / source.relative_to(args.data)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve())
    partial.rename(target)
    return target, length


def check_baseline_split(
    args: argparse.Namespace, seed: int, files: list[Path], split: SplitIndices
) -> None:
    """Stop unless ``split`` holds out the images the baseline of ``seed`` validated on (as its
    checkpoint records them), where that run exists."""
    checkpoint = run_dir(args, "baseline", seed) / "last.safetensors"
    if not checkpoint.exists():
        return
    recorded = read_header(checkpoint)["data"]["split"]
    if recorded["val"] != record_split(relative_paths(args.data, files), split)["val"]:
        sys.exit(f"paper_gap: the split differs from the one {checkpoint} records")


def final_accuracy(path: Path) -> float | None:
    """Validation accuracy after the last epoch of a finished run."""
    if not finished(path):
        return None
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["val_acc"]


def report(args: argparse.Namespace) -> dict:
    """Each factor's final accuracies (from the ledger), their mean, and the change against the
    baseline of the same seed on the same machine (paired: a seed's split, data order and
    initialisation are the same), averaged over the pairs there are."""
    ledger = read_ledger(args)
    runs = [
        entry
        for entry in ledger
        if (entry["epochs"], entry["precision"]) == (args.epochs, args.precision)
        and entry["seed"] in args.seeds
    ]
    # lettered in the order of the ledger's first run on each, the same in every report
    machines = list(dict.fromkeys(entry["machine"] for entry in ledger))
    baseline = {
        (entry["machine"], entry["seed"]): entry["val_acc"]
        for entry in runs
        if entry["factor"] == "baseline"
    }
    rows = {}
    for factor in FACTORS:
        scores = [
            {"seed": e["seed"], "machine": machines.index(e["machine"]), "val_acc": e["val_acc"]}
            for e in runs
            if e["factor"] == factor
        ]
        if not scores:
            continue
        paired = [
            score["val_acc"] - baseline[key]
            for score in scores
            if (key := (machines[score["machine"]], score["seed"])) in baseline
        ]
        rows[factor] = {
            "runs": scores,
            "mean": statistics.fmean(score["val_acc"] for score in scores),
            "delta": statistics.fmean(paired) if paired else None,
        }
    base = rows.get("baseline", {}).get("mean")
    jpeg = {  # each quality's accuracy as the baseline's mean plus its paired change
        FACTORS[f].quality: base + rows[f]["delta"]
        for f in rows
        if FACTORS[f].quality and rows[f]["delta"] is not None
    }
    return {
        "protocol": (
            f"resnet20, --recipe paper --epochs {args.epochs} --precision {args.precision}, "
            "final-epoch val accuracy"
        ),
        "machines": machines,
        "factors": rows,
        "jpeg_extrapolation": None if base is None or not jpeg else extrapolate(args, base, jpeg),
        "all_50k": all_training_images(rows.get("train40k", {}).get("delta")),
    }


def all_training_images(delta_40k: float | None) -> dict | None:
    """What training on all 50k images (the paper's final networks) would add to the 45k
    baseline, from the change at 40k (``train40k``'s delta): along a line in the number of
    images, and along a line in its logarithm (accuracy usually grows so with data)."""
    if delta_40k is None:
        return None
    return {
        "linear": -delta_40k,
        "log_linear": -delta_40k * np.log(50 / 45) / np.log(45 / 40),
    }


def quantiser_scale(quality: int) -> float:
    """libjpeg's (and PIL's) scale of the standard quantisation tables at ``quality``, in
    percent: every step is the table's times this over 100 (at least 1), so 0 at quality 100."""
    return 5000 / quality if quality < 50 else 200 - 2 * quality


def extrapolate(args: argparse.Namespace, base: float, jpeg: dict[int, float]) -> dict:
    """Accuracy on lossless images, by a straight line through the folders' accuracies against
    each of three measures of the loss: JPEG quality (read at 100), the quantiser scale (read
    at 0) and the estimated error against the lost lossless images (read at 0; every folder
    with a score calibrates the estimate, see jpeg_distortion.py; made here if need be). Each
    line's residuals tell how well it fits."""
    accuracy = {args.source_quality: base} | jpeg
    folders = {quality: reencoded(args.data, quality, args.out) for quality in jpeg}
    distortion = against_lossless(args.data, args.source_quality, folders)
    axes = {
        "quality": ([float(q) for q in accuracy], 100.0),
        "quantiser_scale": ([quantiser_scale(q) for q in accuracy], 0.0),
        "mse_against_lossless": ([distortion["mse"][q] for q in accuracy], 0.0),
    }
    scores = np.array(list(accuracy.values()))
    lines = {}
    for axis, (values, lossless) in axes.items():
        line = np.polyfit(values, scores, 1)
        residuals = scores - np.polyval(line, values)
        lines[axis] = {
            "lossless": float(np.polyval(line, lossless)),
            "slope": float(line[0]),
            "rms_residual": float(np.sqrt(np.mean(residuals**2))),
            "at": dict(zip(accuracy, values, strict=True)),
        }
    return {
        "points": len(accuracy),
        "lines": lines,
        "content_scale": distortion["content_scale"],
        "content_scale_per_quality": distortion["content_scale_per_quality"],
    }


MACHINE_TAGS = "ABCDEFGH"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return [" | ".join(["", *header, ""]).strip(), "|" + "---|" * len(header)] + [
        " | ".join(["", *row, ""]).strip() for row in rows
    ]


def markdown(result: dict) -> str:
    rows = [
        [
            factor,
            FACTORS[factor].what,
            ", ".join(
                f"{run['seed']}: {run['val_acc']:.2f} ({MACHINE_TAGS[run['machine']]})"
                for run in row["runs"]
            ),
            f"{row['mean']:.2f}",
            "" if row["delta"] is None else f"{row['delta']:+.2f}",
        ]
        for factor, row in result["factors"].items()
    ]
    header = ["factor", "what", "seed: accuracy (machine)", "mean", "vs baseline, paired"]
    machines = [f"{MACHINE_TAGS[i]}: {name}" for i, name in enumerate(result["machines"])]
    lines = [
        f"Protocol: {result['protocol']}. Machines: {'; '.join(machines)}.",
        "",
        *table(header, rows),
    ]
    if gain := result["all_50k"]:
        lines += [
            "",
            f"All 50k training images instead of 45k, from 40k's change: {gain['linear']:+.2f} "
            f"points along a line in the images, {gain['log_linear']:+.2f} in their logarithm.",
        ]
    if extrapolated := result["jpeg_extrapolation"]:
        rows = [
            [
                axis,
                ", ".join(f"{quality}: {value:.0f}" for quality, value in line["at"].items()),
                f"{line['lossless']:.2f}",
                f"{line['rms_residual']:.2f}",
            ]
            for axis, line in extrapolated["lines"].items()
        ]
        header = ["measure", "at each quality", "lossless", "rms residual"]
        lines += [
            "",
            f"Lossless, extrapolated from {extrapolated['points']} qualities by a line against:",
            "",
            *table(header, rows),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--factors", nargs="+", choices=FACTORS, default=["baseline"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="the protocol's (bf16 where native: a run takes about 0.6 times as long); its runs "
        "are kept apart (default: fp32)",
    )  # fmt: skip
    parser.add_argument(
        "--source-quality", type=int, default=75, help="JPEG quality of --data (default: 75)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_gap"))
    parser.add_argument(
        "--ledger", type=Path, default=LEDGER, help="finished runs' scores (default: %(default)s)"
    )
    parser.add_argument("--report", action="store_true", help="only write the table")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "factors": ["baseline", "jpeg50"], "seeds": [0], "epochs": 1, "out": folder,
            "ledger": folder / LEDGER.name,
        },
    )  # fmt: skip
    if args.precision == "bf16" and "bf16" in args.factors:
        parser.error("--factors bf16: the protocol is in bf16 already (--precision bf16)")
    protocol_dir(args).mkdir(parents=True, exist_ok=True)
    if not args.report:
        for factor in args.factors:
            for seed in args.seeds:
                train(factor, seed, args)
    result = report(args)
    write_atomically(
        protocol_dir(args) / "paper_gap.json",
        lambda f: f.write(json.dumps(result, indent=2).encode()),
        "the results",
    )
    write_atomically(
        protocol_dir(args) / "paper_gap.md",
        lambda f: f.write(markdown(result).encode()),
        "the table",
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
