"""Table preprocessing fitted on the training split and kept as plain JSON in checkpoints.

Numeric columns: missing values imputed with the training median (plus a 0/1 indicator column
when the training split had any), then standardised or quantile-transformed to a normal
distribution. Categorical columns: one-hot, with a ``<missing>`` category when the training
split had empty cells; a category never seen in training maps to all zeros. Columns that
cannot help (constant, all-missing, an ID or free text) are dropped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from resnetlab.errors import ResnetlabError

MISSING = "<missing>"
MAX_QUANTILES = 1000  # as scikit-learn's QuantileTransformer
_TAIL = 1e-7  # quantile-transformed values are clipped to the normal's [1e-7, 1 - 1e-7] quantiles
NEAR_UNIQUE = 0.9  # a text column with a distinct value on this share of its rows is an ID
Where = Callable[[int], str]  # row position -> "file: line 12", for errors


def category_strings(column: pd.Series) -> pd.Series:
    """Categories as text (None where missing): ``3`` and ``3.0`` are both ``"3"``, so that a
    column read as integers in one file and as floats (it had an empty cell) in another agree."""

    def text(value: Any) -> str | None:
        if pd.isna(value):
            return None
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value).strip()

    return column.map(text)


def is_categorical(column: pd.Series) -> bool:
    """Whether pandas read ``column`` as something other than numbers (text, dates...)."""
    return not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def fit_preprocessing(
    frame: pd.DataFrame,
    *,
    categorical: tuple[str, ...] = (),
    max_categories: int = 50,
    numeric_transform: str = "standard",
) -> dict[str, Any]:
    """Fit on ``frame`` (the training rows' feature columns, in file order): the plain-JSON
    description that ``apply_preprocessing`` applies. A column the run cannot use is dropped
    with a warning naming it; none left is an error."""
    unknown = [name for name in categorical if name not in frame.columns]
    if unknown:
        raise ResnetlabError(f"--categorical: no column(s) {', '.join(map(repr, unknown))}")
    columns: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for name in frame.columns:
        column = frame[name]
        if name in categorical or is_categorical(column):
            fitted = _fit_categorical(name, column, max_categories)
        else:
            fitted = _fit_numeric(name, column.astype(float), numeric_transform)
        if isinstance(fitted, str):
            dropped[name] = fitted
            warnings.warn(f"column {name!r} dropped: {fitted}", stacklevel=2)
        else:
            columns.append(fitted)
    if not columns:
        reasons = "; ".join(f"{name!r}: {why}" for name, why in dropped.items())
        raise ResnetlabError(f"no usable feature column ({reasons or 'the table has none'})")
    return {"numeric_transform": numeric_transform, "columns": columns, "dropped": dropped}


def _fit_categorical(name: str, column: pd.Series, max_categories: int) -> dict[str, Any] | str:
    """One-hot categories of ``column``, or why it is dropped."""
    values = category_strings(column)
    present = values.dropna()
    categories = sorted(set(present))
    if not categories:
        return "every value is missing"
    if len(present) >= 10 and len(categories) >= NEAR_UNIQUE * len(present):
        return f"a distinct value on {len(categories)} of {len(present)} rows (an ID or free text?)"
    if len(categories) > max_categories:
        return (
            f"{len(categories)} distinct values, more than --max-categories {max_categories} "
            "(an ID or free text?)"
        )
    if len(categories) == 1 and len(present) == len(values):
        return f"constant ({categories[0]!r})"
    return {
        "name": name,
        "kind": "categorical",
        "categories": categories,
        "missing": bool(values.isna().any()),
    }


def _fit_numeric(name: str, column: pd.Series, transform: str) -> dict[str, Any] | str:
    """Median, indicator and scaling of ``column``, or why it is dropped."""
    values = column.to_numpy(dtype=float)
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return "every value is missing"
    if not np.isfinite(present).all():
        raise ResnetlabError(f"column {name!r} has an infinite value")
    if present.min() == present.max():
        return f"constant ({present[0]:g})"
    median = float(np.median(present))
    filled = np.where(np.isnan(values), median, values)
    fitted: dict[str, Any] = {
        "name": name,
        "kind": "numeric",
        "median": median,
        "indicator": bool(len(present) < len(values)),
    }
    if transform == "quantile":
        levels = np.linspace(0, 1, min(MAX_QUANTILES, len(filled)))
        fitted["quantiles"] = np.quantile(filled, levels).tolist()
    else:
        fitted["mean"], fitted["std"] = float(filled.mean()), float(filled.std())
    return fitted


def feature_names(fitted: dict[str, Any]) -> list[str]:
    """The names of the model's inputs, in order: ``age``, ``age missing``, ``island=Dream``..."""
    names: list[str] = []
    for column in fitted["columns"]:
        name = column["name"]
        if column["kind"] == "numeric":
            names += [name, f"{name} missing"] if column["indicator"] else [name]
        else:
            extra = [MISSING] if column["missing"] else []
            names += [f"{name}={value}" for value in [*column["categories"], *extra]]
    return names


def apply_preprocessing(frame: pd.DataFrame, fitted: dict[str, Any], where: Where) -> np.ndarray:
    """The float32 model inputs of ``frame``'s rows, columns taken by name (any order, extra
    columns ignored); a missing column or a non-numeric value is an error naming it (``where``
    names a row)."""
    absent = [c["name"] for c in fitted["columns"] if c["name"] not in frame.columns]
    if absent:
        needed = ", ".join(c["name"] for c in fitted["columns"])
        raise ResnetlabError(
            f"{where(-1)}: no column(s) {', '.join(map(repr, absent))} (the model takes {needed})"
        )
    blocks = []
    for column in fitted["columns"]:
        if column["kind"] == "numeric":
            blocks.append(_apply_numeric(frame[column["name"]], column, fitted, where))
        else:
            blocks.append(_one_hot(frame[column["name"]], column))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _apply_numeric(
    column: pd.Series, fitted: dict[str, Any], table: dict[str, Any], where: Where
) -> np.ndarray:
    """Imputed, scaled values (and the indicator) of one numeric column, as (rows, 1 or 2)."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(values) & column.notna().to_numpy())
    bad = bad if len(bad) else np.flatnonzero(np.isinf(values))
    if len(bad):
        raise ResnetlabError(
            f"{where(int(bad[0]))}: column {fitted['name']!r} is not a finite number "
            f"({column.iloc[bad[0]]!r})"
        )
    missing = np.isnan(values)
    filled = np.where(missing, fitted["median"], values)
    if table["numeric_transform"] == "quantile":
        scaled = quantile_normal(filled, np.asarray(fitted["quantiles"]))
    else:
        scaled = (filled - fitted["mean"]) / (fitted["std"] or 1.0)
    parts = [scaled, missing.astype(float)] if fitted["indicator"] else [scaled]
    return np.stack(parts, axis=1)


def quantile_normal(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Map ``values`` through the training distribution's quantiles to a standard normal, as
    scikit-learn's ``QuantileTransformer(output_distribution="normal")`` does: the empirical
    CDF by interpolation (averaged up and down, so that ties land mid-way), then the probit."""
    levels = np.linspace(0, 1, len(quantiles))
    up = np.interp(values, quantiles, levels)
    down = -np.interp(-values, -quantiles[::-1], -levels[::-1])
    return ndtri(np.clip(0.5 * (up + down), _TAIL, 1 - _TAIL))


def _one_hot(column: pd.Series, fitted: dict[str, Any]) -> np.ndarray:
    """One 0/1 column per training category (and ``<missing>``); unseen values are all zeros."""
    slots = [*fitted["categories"], *([MISSING] if fitted["missing"] else [])]
    index = {value: i for i, value in enumerate(slots)}
    values = category_strings(column).fillna(MISSING)
    out = np.zeros((len(values), len(slots)))
    for row, value in enumerate(values):
        at = index.get(value)
        if at is not None:
            out[row, at] = 1.0
    return out
