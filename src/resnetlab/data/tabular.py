"""Tables (CSV through pandas, Parquet through pyarrow): the task from the target column, the
split, then preprocessing fitted on the training rows (``data.preprocess``)."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from resnetlab.data.bundle import DataBundle
from resnetlab.data.preprocess import (
    apply_preprocessing,
    category_strings,
    feature_names,
    fit_preprocessing,
    is_categorical,
)
from resnetlab.data.splits import record_split, restore_split, split_indices, split_subsets
from resnetlab.errors import ResnetlabError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
MAX_CLASSES = 20  # an integer target with more distinct values is a regression target
DELIMITERS = ",;\t|"
_SNIFF_BYTES = 65536
_REGRESSION_STRATA = 5  # regression splits are stratified by target quintile


@dataclass(frozen=True)
class TableOptions:
    """How to read a table: its delimiter, which columns are categories, how to scale numbers,
    the task (None: the rule of ``infer_task``) and, with ``strict``, whether rows without a
    target are refused. ``fitted`` (a checkpoint's ``table`` header) is applied, not refitted."""

    delimiter: str | None = None
    categorical: tuple[str, ...] = ()
    max_categories: int = 50
    numeric_transform: str = "standard"
    task: str | None = None
    strict: bool = False
    fitted: dict[str, Any] | None = field(default=None, compare=False)
    split_record: dict[str, Any] | None = field(default=None, compare=False)  # a checkpoint's


def is_table_file(source: str | Path) -> bool:
    """Whether ``source`` names a file of a table format resnetlab reads."""
    return Path(source).suffix.lower() in TABLE_SUFFIXES


def read_table(path: str | Path, delimiter: str | None = None) -> pd.DataFrame:
    """The table in ``path`` (Parquet, or delimited text whose delimiter is sniffed unless
    given), with stripped column names; every reading error is one line naming the file."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        frame = _read_parquet(path)
    else:
        frame = _read_text(path, delimiter)
    frame.columns = [str(name).strip() for name in frame.columns]
    duplicates = sorted({name for name in frame.columns if list(frame.columns).count(name) > 1})
    if duplicates:
        raise ResnetlabError(f"{path}: duplicate column name(s): {', '.join(duplicates)}")
    if frame.empty:
        raise ResnetlabError(f"{path}: no data rows below the header")
    return frame


def require_pyarrow(path: Path) -> None:
    """An error naming ``path`` where pyarrow, which reads Parquet, is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ResnetlabError(
            f"{path}: reading Parquet needs pyarrow: pip install 'resnetlab[parquet]'"
        ) from None


def _read_parquet(path: Path) -> pd.DataFrame:
    require_pyarrow(path)  # pandas' Parquet engine
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


def _read_text(path: Path, delimiter: str | None) -> pd.DataFrame:
    try:
        with path.open(encoding="utf-8-sig") as file:
            sample = file.read(_SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise ResnetlabError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot read the file ({exc.strerror})") from None
    if not sample.strip():
        raise ResnetlabError(f"{path}: the file is empty")
    sep = delimiter or sniff_delimiter(sample)
    header = next(csv.reader([sample.lstrip().splitlines()[0]], delimiter=sep))
    names = [name.strip() for name in header]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:  # pandas would silently rename them "a.1"
        raise ResnetlabError(f"{path}: duplicate column name(s): {', '.join(duplicates)}")
    try:
        return pd.read_csv(
            path, sep=sep, encoding="utf-8-sig", skipinitialspace=True, skip_blank_lines=True,
            na_values=["?", "NA", "N/A", "null", "None", "nan", ""],
        )  # fmt: skip
    except pd.errors.EmptyDataError:
        raise ResnetlabError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise ResnetlabError(f"{path}: {_first_line(exc)} (--delimiter {sep!r})") from None


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a text table (one of ``DELIMITERS``); a comma when it cannot tell."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def infer_task(column: pd.Series, name: str) -> tuple[str, str]:
    """``(task, why)`` by the rule: text or booleans are classes; whole numbers with at most
    ``MAX_CLASSES`` distinct values are classes, with more a quantity; other numbers are a
    quantity (regression)."""
    if is_categorical(column):
        return "classification", f"target {name!r} holds text"
    present = column.dropna().to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # inf is not whole: a quantity, refused when encoded
        fractional = not np.equal(np.mod(present, 1), 0).all()
    if fractional:
        return "regression", f"target {name!r} holds fractional numbers"
    distinct = len(np.unique(present))
    if distinct <= MAX_CLASSES:
        return "classification", f"target {name!r} holds {distinct} distinct whole numbers"
    return (
        "regression",
        f"target {name!r} holds {distinct} (> {MAX_CLASSES}) distinct whole numbers",
    )


def load_table(
    path: str | Path,
    target: str | None,
    options: TableOptions,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> DataBundle:
    """Load a table: the target and task, rows without a target dropped (``--strict``:
    refused), a seeded split (stratified by class, or by target quintile for regression; or
    ``options.split_record``'s, found again row by row if the table changed), then the
    preprocessing fitted on the training rows (or ``options.fitted``) applied to all."""
    frame = read_table(path, options.delimiter)
    if target is None:
        raise ResnetlabError(f"--target is required for tables (columns: {', '.join(frame)})")
    if target not in frame.columns:
        raise ResnetlabError(
            f"--target: column {target!r} not in {Path(path).name} (columns: {', '.join(frame)})"
        )
    frame = _rows_with_target(frame, target, options.strict, path)
    fitted = options.fitted
    if fitted is None:
        task, why = infer_task(frame[target], target)
        if options.task is not None:
            task, why = options.task, f"--task {options.task}"
        fitted = {"task": task, "task_rule": why, "target": target}
    where = _row_namer(path, frame)
    y, classes = _encode_target(frame[target], fitted, target, where)
    features = frame.drop(columns=[target])
    if features.columns.empty:
        raise ResnetlabError(f"{path}: no feature columns besides the target {target!r}")
    regression = fitted["task"] == "regression"
    rows = row_names(frame)
    if options.split_record is not None:
        split = restore_split(options.split_record, rows, str(path), kind="table", unit="rows")
    else:
        strata = np.digitize(y, np.quantile(y, np.linspace(0, 1, _REGRESSION_STRATA + 1)[1:-1]))
        split = split_indices(
            strata if regression else y, val_fraction=val_fraction, test_fraction=test_fraction,
            seed=seed, class_names=None if regression else classes,
        )  # fmt: skip
    if "columns" not in fitted:
        train_rows = features.iloc[split.train]
        fitted = {
            **fitted,
            **_target_record(y[split.train], classes, regression),
            **fit_preprocessing(
                train_rows,
                categorical=options.categorical,
                max_categories=options.max_categories,
                numeric_transform=options.numeric_transform,
            ),
        }
    if regression:
        y = ((y - fitted["target_mean"]) / fitted["target_std"]).astype(np.float32)
    x = apply_preprocessing(features, fitted, where)
    train, val, test = split_subsets(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), split)
    names = feature_names(fitted)
    counts = None if regression else np.bincount(y[split.train], minlength=len(classes)).tolist()
    return DataBundle(
        Path(path).name, "tabular", classes, (len(names),), train, val, test,
        [0.0] * len(names), [1.0] * len(names), names,
        task=fitted["task"], table=fitted, class_counts=counts,
        split_record=record_split(rows, split),
    )  # fmt: skip


def row_names(frame: pd.DataFrame) -> list[str]:
    """A name per row from its values (a 64-bit hash), by which a recorded split finds its
    held-out rows again in a table that was reordered or had rows added or removed."""
    return [f"{h:016x}" for h in pd.util.hash_pandas_object(frame, index=False).to_numpy()]


def _target_record(y: np.ndarray, classes: list[str], regression: bool) -> dict[str, Any]:
    """What the header keeps of the target: the training rows' mean and std, or the classes."""
    if regression:
        return {"target_mean": float(y.mean()), "target_std": float(y.std()) or 1.0}
    return {"classes": classes}


def _rows_with_target(
    frame: pd.DataFrame, target: str, strict: bool, path: str | Path
) -> pd.DataFrame:
    """``frame`` without the rows whose target is missing (a warning with their count);
    ``strict``: an error naming the first such line."""
    missing = frame[target].isna().to_numpy()
    if not missing.any():
        return frame
    if missing.all():
        raise ResnetlabError(f"{path}: the target {target!r} has no value in any row")
    where = _row_namer(path, frame)(int(np.flatnonzero(missing)[0]))
    if strict:
        raise ResnetlabError(
            f"{where}: no value for the target {target!r} ({int(missing.sum())} rows lack one; "
            "without --strict they are dropped)"
        )
    warnings.warn(
        f"{Path(path).name}: {int(missing.sum())} rows without a target {target!r} dropped "
        f"(the first: {where})",
        stacklevel=3,
    )
    return frame[~missing]


def _encode_target(
    column: pd.Series, fitted: dict[str, Any], target: str, where: Callable[[int], str]
) -> tuple[np.ndarray, list[str]]:
    """The target as float64 values (regression; ``classes`` empty), or as class indices into
    ``classes``: ``fitted``'s when it has them, else the column's own."""
    if fitted["task"] == "regression":
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ResnetlabError(
                f"{where(row)}: regression: target {target!r} must be a finite number "
                f"(got {column.iloc[row]})"
            )
        return values, []
    names = category_strings(column)
    classes = fitted.get("classes") or sorted_classes(set(names))
    if len(classes) < 2:
        raise ResnetlabError(f"--target: column {target!r} has only one class ({classes[0]!r})")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(names) - index.keys())
    if unknown:
        raise ResnetlabError(
            f"--target: column {target!r} has class(es) the model does not know: "
            f"{', '.join(unknown[:5])} (it knows {', '.join(classes)})"
        )
    return np.array([index[name] for name in names], dtype=np.int64), classes


def sorted_classes(names: set[str]) -> list[str]:
    """Class names sorted by name, or numerically when every one is an integer."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _row_namer(path: str | Path, frame: pd.DataFrame) -> Callable[[int], str]:
    """``where(i)``: the file and, for text tables, the line of the ``i``-th row of ``frame``
    (-1: the file alone). Lines count the header; blank lines are not counted."""
    name, text = Path(path).name, Path(path).suffix.lower() != ".parquet"
    positions = frame.index.to_numpy()

    def where(i: int) -> str:
        if i < 0:
            return name
        at = int(positions[i])
        return f"{name}: line {at + 2}" if text else f"{name}: row {at + 1}"

    return where


def read_inputs(path: str | Path, fitted: dict[str, Any]) -> np.ndarray:
    """The model inputs of every row of the table ``path``, preprocessed as ``fitted`` says
    (a checkpoint's ``table`` header); columns may come in any order, the target may be absent."""
    frame = read_table(path)
    return apply_preprocessing(frame, fitted, _row_namer(path, frame))


def read_feature_columns(path: str | Path, names: list[str]) -> np.ndarray:
    """The ``names`` columns of the table ``path``, as float32 rows (a model trained on
    built-in data, which has no fitted preprocessing)."""
    frame = read_table(path)
    absent = [name for name in names if name not in frame.columns]
    if absent:
        raise ResnetlabError(
            f"{path}: no column(s) {', '.join(absent)} (the model takes {', '.join(names)})"
        )
    try:
        return frame[names].to_numpy(dtype=np.float32)
    except ValueError:
        raise ResnetlabError(f"{path}: the columns {', '.join(names)} must be numbers") from None
