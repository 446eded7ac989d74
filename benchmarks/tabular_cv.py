"""resnet_tabular with the default table recipe (``--recipe tabular``) against scikit-learn's
baselines (``--baselines``), on the same folds: 5-fold cross-validation repeated with 3 seeds.

Each fold's test rows are one fifth of the table (stratified by class, or by target quintile
for regression); 15% of the rest (stratified, seeded) is the network's validation split for
early stopping, and the baselines fit the same training rows after the same preprocessing.
The tables measured: scikit-learn's breast-cancer, wine and diabetes, the Palmer penguins
(``palmerpenguins``: categorical columns and missing values) and the article's case
(``tabular-synthetic``). The recipe was chosen on other tables (``--tables tune``).

    python benchmarks/tabular_cv.py --out benchmarks/results/tabular_cv.json
    python benchmarks/tabular_cv.py --tables tune --set lr=3e-3 --folds 3 --seeds 1
    python benchmarks/tabular_cv.py --smoke     # the penguins, 2 folds, 2 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import smoke
import torch
import yaml
from sklearn import datasets
from sklearn.model_selection import StratifiedKFold

from resnetlab.config.recipes import recipe_defaults
from resnetlab.config.train import TrainConfig
from resnetlab.data import TableOptions, make_case_study_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.splits import SplitIndices, record_split, split_indices
from resnetlab.data.tabular import infer_task, load_table, read_table, row_names
from resnetlab.experiments.common import train_on_bundle
from resnetlab.training.baselines import fit_baselines

MEASURED = ("breast-cancer", "wine", "penguins", "diabetes", "article")
TUNING = ("tune-classification", "tune-friedman", "tune-digits", "tune-iris")
VAL_FRACTION = 0.15


def load_frame(name: str) -> tuple[pd.DataFrame, str]:
    """A table and its target column."""
    sklearn_sets = {
        "breast-cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
        "tune-digits": datasets.load_digits,
        "tune-iris": datasets.load_iris,
    }
    if name in sklearn_sets:
        return sklearn_sets[name](as_frame=True).frame, "target"
    if name == "penguins":
        from palmerpenguins import load_penguins

        return load_penguins(), "species"
    if name == "article":
        x, y = make_case_study_data()
    elif name == "tune-classification":
        x, y = datasets.make_classification(
            800, 20, n_informative=6, n_redundant=4, flip_y=0.05, random_state=7
        )
    elif name == "tune-friedman":
        x, y = datasets.make_friedman1(600, 10, noise=1.0, random_state=7)
    else:
        raise SystemExit(f"unknown table {name!r}")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    return frame, "target"


def fold_splits(strata: np.ndarray, folds: int, seed: int) -> list[SplitIndices]:
    """Stratified folds; within each, a stratified validation split of the training rows."""
    splits = []
    kfold = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for rest, test in kfold.split(np.zeros(len(strata)), strata):
        inner = split_indices(strata[rest], val_fraction=VAL_FRACTION, test_fraction=0, seed=seed)
        splits.append(SplitIndices(rest[inner.train], np.sort(rest[inner.val]), test))
    return splits


def load_fold(
    path: Path, target: str, seed: int, rows: list[str], split: SplitIndices
) -> DataBundle:
    """The table in ``path`` split as ``split`` says (positions among its ``rows``), the
    preprocessing fitted on the split's training rows."""
    options = TableOptions(split_record=record_split(rows, split))
    return load_table(path, target, options, val_fraction=0, test_fraction=0, seed=seed)


def strata_of(column: pd.Series, regression: bool) -> np.ndarray:
    """Class labels, or target quintiles for regression."""
    if regression:
        return np.digitize(column, np.quantile(column, [0.2, 0.4, 0.6, 0.8]))
    return pd.factorize(column.astype(str))[0]


def score(report: dict) -> float:
    """Accuracy (%) or R²."""
    return report["r2"] if "r2" in report else report["accuracy"]


def run_table(name: str, args: argparse.Namespace, overrides: dict, scratch: Path) -> dict:
    """Every method's score on every (seed, fold) of ``name``."""
    frame, target = load_frame(name)
    path = scratch / f"{name}.csv"
    frame.to_csv(path, index=False)
    frame = read_table(path)  # as load_table reads it: the rows' names come from its values
    rows = row_names(frame)
    recipe = recipe_defaults("tabular")
    names = {f.name for f in fields(TrainConfig)}
    base = {k: v for k, v in {**recipe, **overrides}.items() if k in names}
    scores: dict[str, list[float]] = {}
    epochs: list[int] = []
    task = infer_task(frame[target], target)[0]
    strata = strata_of(frame[target], task == "regression")
    for seed in range(args.seeds):
        for fold, split in enumerate(fold_splits(strata, args.folds, seed)):
            bundle = load_fold(path, target, seed, rows, split)
            cfg = TrainConfig(
                **{
                    **base,
                    "data": str(path),
                    "target": target,
                    "seed": seed,
                    "out": str(scratch / f"{name}-{seed}-{fold}"),
                    "quiet": True,
                }
            )
            with contextlib.redirect_stdout(io.StringIO()):
                result = train_on_bundle(cfg, bundle, name)
            reports = {"resnet_tabular": result.test_report, **fit_baselines(bundle)}
            for method, report in reports.items():
                scores.setdefault(method, []).append(score(report))
            epochs.append(len(result.history))
            line = ", ".join(f"{m} {v[-1]:.3f}" for m, v in scores.items())
            print(f"{name} seed {seed} fold {fold}: {line} ({epochs[-1]} epochs)", flush=True)
    summary = {
        method: {"mean": statistics.fmean(v), "std": statistics.stdev(v), "values": v}
        for method, v in scores.items()
    }
    return {
        "task": task,
        "metric": "r2" if task == "regression" else "accuracy",
        "rows": len(frame),
        "methods": summary,
        "epochs_mean": statistics.fmean(epochs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tables",
        nargs="+",
        default=list(MEASURED),
        help=f"{', '.join(MEASURED)}; tune = {', '.join(TUNING)}",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe setting (tuning)",
    )
    parser.add_argument("--out", help="JSON file for the results")
    args = smoke.parse_args(
        parser,
        lambda folder: {
            "tables": ["penguins"], "folds": 2, "seeds": 1, "set": ["epochs=2"],
            "out": str(folder / "tabular_cv.json"),
        },
    )  # fmt: skip
    tables = [t for name in args.tables for t in (TUNING if name == "tune" else (name,))]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    torch.set_num_threads(1)  # networks of a few thousand weights: one thread is fastest
    warnings.simplefilter("ignore")
    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for name in tables:
            results[name] = run_table(name, args, overrides, Path(scratch))
    print()
    for name, table in results.items():
        cells = []
        for method, s in table["methods"].items():
            cells.append(f"{method} {s['mean']:.3f} ± {s['std']:.3f}")
        print(f"{name} ({table['metric']}): " + "; ".join(cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "folds": args.folds,
            "seeds": args.seeds,
            "val_fraction": VAL_FRACTION,
            "recipe": {**recipe_defaults("tabular"), **overrides},
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "seconds": time.perf_counter() - started,
            "tables": results,
        }
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
