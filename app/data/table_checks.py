"""What the loaders of users' own tables share: reading a file, the target's task and checks, the column checks.

Used by :mod:`app.data.tabular` (one row per example) and :mod:`app.data.sequence_table` (one row per time step).
Training-only: needs pandas (and pyarrow for Parquet).

Task inference (:func:`infer_task`): a numeric target with more than ``MAX_CLASSES`` distinct values or any value
that is not a whole number is a regression; any other target (text, bool, or few whole numbers) is a
classification. :func:`check_target` applies a forced task and refuses what cannot work with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from app.data.schema import FeatureKind, FeatureSpec, PlausibleRange
from app.errors import DataError, MissingExtra

# A categorical feature with more levels is refused: one-hot columns with a handful of rows each, and levels met
# first in the validation or test split, teach the network nothing it can use.
MAX_LEVELS = 50
# A text or integer feature whose values are (nearly) all distinct looks like an identifier (a name, an id):
# text from this share of distinct values up, integers when all distinct and in row order or consecutive.
ID_DISTINCT_SHARE = 0.95
ID_MIN_ROWS = 20  # fewer rows say too little to call a column an identifier
# A numeric target with more distinct values, or any value that is not a whole number, is continuous.
MAX_CLASSES = 20
SHOWN = 5  # names an error message lists before "and N more"
REGRESSION, CLASSIFICATION = "regression", "classification"
TASKS = (REGRESSION, CLASSIFICATION)


def listed(names: list[str], shown: int = SHOWN) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': a list short enough for an error message."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"


def file_kind(path: Path) -> str:
    """'csv' or 'parquet', from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    if ".csv" in suffixes[-2:]:  # also data.csv.gz and the like
        return "csv"
    raise DataError(f"{path}: unsupported file type; use .csv or .parquet/.pq")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet table, turning the usual failures into DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = file_kind(path)
    try:
        if kind == "parquet":
            try:
                import pyarrow  # noqa: F401  (pandas' Parquet engine)
            except ImportError as err:
                raise MissingExtra("pyarrow", "parquet", f"{path}: reading Parquet") from err
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (DataError, MissingExtra):
        raise
    except Exception as err:  # parser errors come in many types; all mean the file cannot be used
        raise DataError(f"{path}: cannot read {kind} file: {err}") from err


def label(value: object) -> str:
    """A target value as a label string; 1.0 and 1 give the same label (missing values turn ints to floats)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def encode(values: pd.Series, labels: list[str], where: str) -> np.ndarray:
    """(N,) int64 class ids; -1 where the target is missing; DataError on a label unseen in training."""
    lookup = {name: i for i, name in enumerate(labels)}
    ids = np.full(len(values), -1, dtype=np.int64)
    for row, (value, missing) in enumerate(zip(values.tolist(), values.isna().tolist(), strict=True)):
        if missing:
            continue
        if label(value) not in lookup:
            raise DataError(f"{where}: target value '{value}' at row {row} is not one of the labels {listed(labels)}")
        ids[row] = lookup[label(value)]
    return ids


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)


def float_targets(values: pd.Series, target: str, where: str) -> np.ndarray:
    """(N,) float64 regression targets, NaN where missing; DataError on text or an infinity."""
    if not _is_number(values):
        raise DataError(f"{where}: {target}: a regression target must be numeric, but the column holds {values.dtype}")
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(numbers).any():
        row = int(np.flatnonzero(np.isinf(numbers))[0])
        raise DataError(f"{where}: {target}: infinite target value at row {row}; targets must be finite numbers")
    return numbers


def infer_task(values: pd.Series) -> str:
    """'regression' for a numeric target with more than ``MAX_CLASSES`` distinct values or any value that is not
    a whole number, else 'classification' (``values`` without missing entries)."""
    if not _is_number(values):
        return CLASSIFICATION
    numbers = values.to_numpy(dtype=np.float64)
    fractional = bool((numbers != np.round(numbers)).any())
    return REGRESSION if fractional or np.unique(numbers).size > MAX_CLASSES else CLASSIFICATION


def check_target(values: pd.Series, target: str, task: str | None = None) -> str:
    """The task to train (``task``, or inferred by :func:`infer_task` when None) for a target column without
    missing entries; DataError on an infinite value, on ``task="classification"`` for a continuous target (too
    many classes), on ``task="regression"`` for a non-numeric target, and on an unknown task."""
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)} (or left out to infer it), got {task!r}")
    if _is_number(values) and np.isinf(values.to_numpy(dtype=np.float64)).any():
        count = int(np.isinf(values.to_numpy(dtype=np.float64)).sum())
        raise DataError(f"{target}: {count} infinite target value(s); targets must be finite numbers")
    inferred = infer_task(values)
    if task == REGRESSION and not _is_number(values):
        kind = "true/false values" if pd.api.types.is_bool_dtype(values.dtype) else "text"
        example = next(iter(values.tolist()), None)
        raise DataError(
            f"{target}: task 'regression' needs a numeric target, but the column holds {kind} (e.g. {example!r}); "
            "convert it to numbers, or train a classification."
        )
    if task == CLASSIFICATION and inferred == REGRESSION:
        numbers = values.to_numpy(dtype=np.float64)
        distinct = np.unique(numbers).size
        fractional = bool((numbers != np.round(numbers)).any())
        why = "some not whole numbers" if fractional else f"more than {MAX_CLASSES}"
        raise DataError(
            f"{target}: the target looks continuous ({distinct} distinct numeric values, {why}): too many classes "
            "for task 'classification'. Train a regression (leave the task out), bin the target into classes, or "
            "write class codes as text (e.g. 'c17') to train on them as classes."
        )
    if task == REGRESSION or (task is None and inferred == REGRESSION):
        if values.nunique() < 2:
            raise DataError(f"{target}: a regression needs at least 2 distinct target values")
        return REGRESSION
    return CLASSIFICATION


def annotate(
    specs: list[FeatureSpec], plausible: Mapping[str, PlausibleRange], units: Mapping[str, str]
) -> list[FeatureSpec]:
    """Feature specs with the user's plausible ranges and units; DataError naming an unknown or categorical
    feature."""
    numeric = {s.name for s in specs if s.kind is FeatureKind.NUMERIC}
    for option, given in (("bounds", plausible), ("units", units)):
        for name in given:
            if name not in numeric:
                raise DataError(f"{name}: --{option} names a feature that is not a numeric feature of the table")
    return [s.model_copy(update={"plausible": plausible.get(s.name), "unit": units.get(s.name)}) for s in specs]


def allow_gaps(specs: list[FeatureSpec], frame: pd.DataFrame) -> list[FeatureSpec]:
    """A feature missing anywhere in ``frame`` takes missing values (its own level, or an indicator column):
    otherwise a gap that only the validation or test split holds would fail after training."""
    gaps = frame[[s.name for s in specs]].isna().any()
    return [s.model_copy(update={"missing_allowed": True}) if gaps[s.name] else s for s in specs]


def _unusable(series: pd.Series, categorical: bool) -> str | None:
    """Why a feature column cannot be learned from (an identifier, too many levels), or None."""
    observed = series.dropna()  # missing values are the preprocessing's business (their own level)
    rows, distinct = len(observed), int(observed.nunique())
    if categorical:
        if rows >= ID_MIN_ROWS and distinct >= ID_DISTINCT_SHARE * rows:
            return f"{distinct} distinct values in {rows} rows: an identifier?"
        if distinct > MAX_LEVELS:
            return f"{distinct} categories, more than {MAX_LEVELS}"
        return None
    numbers = observed.to_numpy(dtype=np.float64)
    if rows < ID_MIN_ROWS or distinct < rows or (numbers != np.round(numbers)).any():
        return None
    ordered = bool((np.diff(numbers) > 0).all() or (np.diff(numbers) < 0).all())
    if ordered or numbers.max() - numbers.min() + 1 == rows:
        return f"{rows} distinct whole numbers in order: an identifier?"
    return None


def check_columns(frame: pd.DataFrame, features: list[str], categorical: list[str] | None = None) -> None:
    """DataError naming every feature that looks like an identifier or has more than ``MAX_LEVELS`` categories,
    before any training time is spent on them."""
    chosen = set(categorical or [])
    refused: list[tuple[str, str]] = []  # (column, why)
    for name in features:
        series = frame[name]
        reason = _unusable(series, categorical=name in chosen or not _is_number(series))
        if reason is not None:
            refused.append((name, reason))
    if refused:
        plural = "s" if len(refused) > 1 else ""
        raise DataError(
            f"{len(refused)} feature column{plural} cannot be learned from: "
            f"{listed([f'{name} ({why})' for name, why in refused])}. Leave {'them' if plural else 'it'} out with "
            f"--drop {','.join(name for name, _ in refused)}, or name the features to use with --features."
        )


def check_levels(specs: list[FeatureSpec], *frames: pd.DataFrame) -> None:
    """DataError when a category of the validation or test frames never occurs in the training split: the model
    could not score those rows (too rare a level to learn; missing values are the preprocessing's own level)."""
    for spec in specs:
        if spec.kind is not FeatureKind.CATEGORICAL:
            continue
        known = set(spec.categories or [])
        unseen = sorted({str(v) for f in frames for v in f[spec.name].dropna().tolist()} - known)
        if unseen:
            many = len(unseen) > 1
            raise DataError(
                f"{spec.name}: {'categories' if many else 'category'} {listed([repr(v) for v in unseen])} "
                f"{'occur' if many else 'occurs'} only in the validation or test split (too rare to learn); merge "
                f"rare categories into a common one, or leave the column out with --drop {spec.name}."
            )


def choose_features(
    columns: list[str], features: list[str] | None, drop: list[str] | None, reserved: dict[str, str], where: str
) -> list[str]:
    """The feature columns: ``features`` or every column but the ``reserved`` ones (column -> its role, e.g.
    "the target"), less ``drop``; DataError on an unknown or reserved column, or an empty/duplicated list."""
    absent = [c for c in drop or [] if c not in columns]
    if absent:
        raise DataError(f"{absent[0]}: --drop names no column of {where}")
    if features is None:
        features = [str(c) for c in columns if c not in reserved]
    features = [f for f in features if f not in set(drop or [])]
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise DataError(f"{unknown[0]}: no such column in {where}")
    for name in features:
        if name in reserved:
            raise DataError(f"{name}: {reserved[name]} cannot also be a feature")
    if len(set(features)) != len(features) or not features:
        raise DataError(f"features must be a non-empty list of distinct columns, got {listed(features)}")
    return features
