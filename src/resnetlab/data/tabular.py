"""CSV tables: numeric feature columns plus one target column naming the class."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.bundle import DataBundle, bundle_from_tensors
from resnetlab.errors import ResnetlabError

MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
Row = tuple[int, list[str]]  # (line number in the file, fields)


def read_csv_table(
    path: str | Path, target: str | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Read ``path`` into features and class indices of the ``target`` column.

    Returns ``(x, y, classes, feature_names)``: ``x`` float32 (rows x features, in column
    order), ``y`` int64, ``classes`` sorted by name (integers numerically). Every error (empty
    file, ragged row, missing value, non-numeric feature) names the file or column at fault.
    """
    name = str(path)
    header, rows = _read_rows(Path(path))
    if target is None:
        raise ResnetlabError(f"--target is required for CSV data (columns: {', '.join(header)})")
    if target not in header:
        raise ResnetlabError(
            f"--target: column {target!r} not in {name} (columns: {', '.join(header)})"
        )
    features = [column for column in header if column != target]
    if not features:
        raise ResnetlabError(f"{name}: no feature columns besides the target {target!r}")
    x = _feature_matrix(name, header, rows, features)
    y, classes = _encode_classes(_column_values(name, header, rows, target), target)
    return x, y, classes, features


def read_csv_features(path: str | Path, feature_names: list[str]) -> np.ndarray:
    """The ``feature_names`` columns of ``path``, in that order, as float32 rows.

    Other columns (such as the target) are ignored; a missing feature column is an error.
    """
    header, rows = _read_rows(Path(path))
    absent = [column for column in feature_names if column not in header]
    if absent:
        raise ResnetlabError(
            f"{path}: no column(s) {', '.join(absent)} (the model takes {', '.join(feature_names)})"
        )
    return _feature_matrix(str(path), header, rows, feature_names)


def load_csv(
    path: str | Path, target: str | None, *, val_fraction: float, test_fraction: float, seed: int
) -> DataBundle:
    """Load a CSV table as tabular data: split, with per-feature training statistics."""
    x, y, classes, features = read_csv_table(path, target)
    return bundle_from_tensors(
        Path(path).name,
        "tabular",
        torch.from_numpy(x),
        torch.from_numpy(y),
        classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        feature_names=features,
    )


def _encode_classes(values: list[str], target: str) -> tuple[np.ndarray, list[str]]:
    """Class index of each value and the sorted class names (integers sorted numerically)."""
    names = set(values)
    if all(_is_int(value) for value in names):
        classes = sorted(names, key=lambda value: (int(value), value))
    else:
        classes = sorted(names)
    if len(classes) < 2:
        raise ResnetlabError(f"--target: column {target!r} has only one class ({classes[0]!r})")
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[value] for value in values], dtype=np.int64), classes


def _read_rows(path: Path) -> tuple[list[str], list[Row]]:
    """The header and the ``(line number, fields)`` of every non-blank row of ``path``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            lines = [(reader.line_num, row) for row in reader if any(f.strip() for f in row)]
    except UnicodeDecodeError as exc:
        raise ResnetlabError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise ResnetlabError(f"{path}: cannot read the file ({exc.strerror})") from None
    if not lines:
        raise ResnetlabError(f"{path}: the file is empty")
    header = [column.strip() for column in lines[0][1]]
    duplicates = sorted({column for column in header if header.count(column) > 1})
    if duplicates:
        raise ResnetlabError(f"{path}: duplicate column name(s): {', '.join(duplicates)}")
    rows = lines[1:]
    if not rows:
        raise ResnetlabError(f"{path}: no data rows below the header")
    for number, row in rows:
        if len(row) != len(header):
            raise ResnetlabError(
                f"{path}: line {number} has {len(row)} fields, the header has {len(header)}"
            )
    return header, rows


def _column_values(name: str, header: list[str], rows: list[Row], column: str) -> list[str]:
    """The stripped values of ``column``, or an error naming the first missing one."""
    at = header.index(column)
    for line, row in rows:
        if row[at].strip().lower() in MISSING_MARKERS:
            raise ResnetlabError(
                f"{name}: column {column!r} has a missing value on line {line}; "
                "fill or drop it first"
            )
    return [row[at].strip() for _, row in rows]


def _feature_matrix(
    name: str, header: list[str], rows: list[Row], columns: list[str]
) -> np.ndarray:
    """``columns`` as a float32 matrix (rows x columns), or an error naming the bad column."""
    return np.stack(
        [_numeric_column(name, c, _column_values(name, header, rows, c)) for c in columns], axis=1
    ).astype(np.float32)


def _numeric_column(name: str, column: str, values: list[str]) -> np.ndarray:
    """``values`` as float64, or an error naming the column and its first non-numeric value."""
    numbers = np.empty(len(values))
    for i, value in enumerate(values):
        try:
            numbers[i] = float(value)
        except ValueError:
            raise ResnetlabError(
                f"{name}: column {column!r} is not numeric (e.g. value {value!r}); encode it first"
            ) from None
        if not math.isfinite(numbers[i]):
            raise ResnetlabError(f"{name}: column {column!r} has a non-finite value {value!r}")
    return numbers


def _is_int(value: str) -> bool:
    """Whether ``value`` is written as an integer (``"3"``, ``"-1"``)."""
    try:
        int(value)
    except ValueError:
        return False
    return True
