"""Users' own classification tables (CSV or Parquet), split like the bundled data set.

Training-only: needs pandas (and pyarrow for Parquet).

Before a split, :func:`check_columns` refuses what would fail or mislead after training starts (see
docs/data.md): a numeric target with more than ``MAX_CLASSES`` distinct values or any non-whole value (a
continuous target: classification only for now), and features that look like identifiers or have more than
``MAX_LEVELS`` categories. Missing values in a categorical feature are left to the preprocessing, which keeps
them as a level of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from app.data.dataset import (
    DataProvenance,
    Split,
    TabularDataset,
    check_fractions,
    file_sha256,
    make_split,
    row_counts,
    split_population,
)
from app.data.preprocess import infer_feature_specs
from app.data.schema import FeatureKind, FeatureSpec, PlausibleRange
from app.errors import DataError, MissingExtra

OOD_NAME = "ood-file"

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


def listed(names: list[str], shown: int = SHOWN) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': a list short enough for an error message."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"


def _file_kind(path: Path) -> str:
    """'csv' or 'parquet', from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    if ".csv" in suffixes[-2:]:  # also data.csv.gz and the like
        return "csv"
    raise DataError(f"{path}: unsupported file type; use .csv or .parquet/.pq")


def _read(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet table, turning the usual failures into DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _file_kind(path)
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


def _label(value: object) -> str:
    """A target value as a label string; 1.0 and 1 give the same label (missing values turn ints to floats)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _encode(values: pd.Series, labels: list[str], where: str) -> np.ndarray:
    """(N,) int64 class ids; -1 where the target is missing; DataError on a label unseen in training."""
    lookup = {label: i for i, label in enumerate(labels)}
    ids = np.full(len(values), -1, dtype=np.int64)
    for row, (value, missing) in enumerate(zip(values.tolist(), values.isna().tolist(), strict=True)):
        if missing:
            continue
        if _label(value) not in lookup:
            raise DataError(f"{where}: target value '{value}' at row {row} is not one of the labels {listed(labels)}")
        ids[row] = lookup[_label(value)]
    return ids


def _annotate(
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


def check_target(values: pd.Series, target: str) -> None:
    """DataError when a numeric target looks continuous: more than ``MAX_CLASSES`` distinct values, or a value
    that is not a whole number (``values`` without missing entries)."""
    if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return
    numbers = values.to_numpy(dtype=np.float64)
    distinct = np.unique(numbers).size
    fractional = bool((numbers != np.round(numbers)).any())
    if distinct > MAX_CLASSES or fractional:
        why = "some not whole numbers" if fractional else f"more than {MAX_CLASSES}"
        raise DataError(
            f"{target}: the target looks continuous ({distinct} distinct numeric values, {why}); sbnn trains "
            "classifiers only for now (regression is planned). Bin it into classes first, or write class codes "
            "as text (e.g. 'c17') to train on them as classes."
        )


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
    """DataError naming every feature that looks like an identifier or has more than ``MAX_LEVELS`` categories
    (see the module's docstring), before any training time is spent on them."""
    chosen = set(categorical or [])
    refused: list[tuple[str, str]] = []  # (column, why)
    for name in features:
        series = frame[name]
        numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
        reason = _unusable(series, categorical=name in chosen or not numeric)
        if reason is not None:
            refused.append((name, reason))
    if refused:
        plural = "s" if len(refused) > 1 else ""
        raise DataError(
            f"{len(refused)} feature column{plural} cannot be learned from: "
            f"{listed([f'{name} ({why})' for name, why in refused])}. Leave {'them' if plural else 'it'} out with "
            f"--drop {','.join(name for name, _ in refused)}, or name the features to use with --features."
        )


def _check_levels(specs: list[FeatureSpec], *splits: Split) -> None:
    """DataError when a category of the validation or test split never occurs in the training split: the model
    could not score those rows (too rare a level to learn; missing values are the preprocessing's own level)."""
    for spec in specs:
        if spec.kind is not FeatureKind.CATEGORICAL:
            continue
        known = set(spec.categories or [])
        unseen = sorted({str(v) for s in splits for v in s.frame[spec.name].dropna().tolist()} - known)
        if unseen:
            many = len(unseen) > 1
            raise DataError(
                f"{spec.name}: {'categories' if many else 'category'} {listed([repr(v) for v in unseen])} "
                f"{'occur' if many else 'occurs'} only in the validation or test split (too rare to learn); merge "
                f"rare categories into a common one, or leave the column out with --drop {spec.name}."
            )


def load_table(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    ood_path: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    plausible: Mapping[str, PlausibleRange] | None = None,
    units: Mapping[str, str] | None = None,
    drop: list[str] | None = None,
    check: bool = True,
) -> TabularDataset:
    """Load a classification table, drop rows without a target, split stratified, and add an optional OOD file.

    Labels are the sorted unique target values as strings; features default to every column but the target,
    less ``drop``. With ``check`` (for a new model; a checkpoint's data is rebuilt without), a continuous target
    and unusable features are refused first (:func:`check_target`, :func:`check_columns`).
    ``plausible`` bounds numeric features' physically possible values (the gate rejects rows outside them) and
    ``units`` names their units (the stress suite converts them); both are kept in the provenance.
    """
    path = Path(path)
    fractions = check_fractions(fractions)
    table = _read(path)
    sha = file_sha256(path)
    if target not in table.columns:
        raise DataError(f"{target}: target column not in {path.name}")
    has_target = table[target].notna()
    dropped = int((~has_target).sum())
    table = table[has_target].reset_index(drop=True)
    if check:
        check_target(table[target], target)
    labels = sorted({_label(v) for v in table[target].tolist()})
    if len(labels) < 2:
        raise DataError(f"{target}: need at least 2 classes, found {labels}")
    y = _encode(table[target], labels, str(path))

    absent = [c for c in drop or [] if c not in table.columns]
    if absent:
        raise DataError(f"{absent[0]}: --drop names no column of {path.name}")
    if features is None:
        features = [str(c) for c in table.columns if c != target]
    features = [f for f in features if f not in set(drop or [])]
    unknown = [f for f in features if f not in table.columns]
    if unknown:
        raise DataError(f"{unknown[0]}: no such column in {path.name}")
    if target in features:
        raise DataError(f"{target}: the target cannot also be a feature")
    if len(set(features)) != len(features) or not features:
        raise DataError(f"features must be a non-empty list of distinct columns, got {listed(features)}")
    if check:
        check_columns(table, features, categorical)

    train, val, test = split_population(table[features], y, fractions, seed)
    specs = _annotate(infer_feature_specs(train.frame, features, categorical), plausible or {}, units or {})
    # A feature missing anywhere in the table takes missing values (its own level, or an indicator column):
    # otherwise a gap that only the validation or test split holds would fail after training.
    gaps = table[features].isna().any()
    specs = [s.model_copy(update={"missing_allowed": True}) if gaps[s.name] else s for s in specs]
    if check:
        _check_levels(specs, val, test)

    options: dict[str, object] = {
        "path": str(path.resolve()),
        "features": list(features),
        "categorical": list(categorical) if categorical else None,
        "ood_path": None,
        "ood_sha256": None,
        "dropped_missing_target": dropped,
        "plausible": {k: v.model_dump() for k, v in (plausible or {}).items()} or None,
        "units": dict(units) if units else None,
    }
    ood: dict[str, Split] = {}
    ood_reasons: dict[str, str] = {}
    if ood_path is not None:
        ood_path = Path(ood_path)
        ood_table = _read(ood_path)
        absent = [f for f in features if f not in ood_table.columns]
        if absent:
            raise DataError(f"{absent[0]}: feature missing from the OOD file {ood_path.name}")
        ood_y = (
            _encode(ood_table[target], labels, str(ood_path))
            if target in ood_table.columns
            else np.full(len(ood_table), -1, dtype=np.int64)
        )
        ood[OOD_NAME] = make_split(ood_table[features], ood_y)
        ood_reasons[OOD_NAME] = (
            f"User-supplied table {ood_path.name}: the shift is whatever sets it apart from {path.name}."
        )
        options.update(ood_path=str(ood_path.resolve()), ood_sha256=file_sha256(ood_path))

    provenance = DataProvenance(
        source=f"{_file_kind(path)}:{path.resolve()}",
        sha256=sha,
        target=target,
        population=(
            f"Rows of {path.name} with a known '{target}' ({len(y)} of {len(y) + dropped}), "
            f"split {fractions[0]:g}/{fractions[1]:g}/{fractions[2]:g} stratified by class."
        ),
        rows=row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,
        ood_sets=ood_reasons,
        options=options,
    )
    return TabularDataset(
        name=path.name.split(".")[0],
        target=target,
        labels=labels,
        features=specs,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
    )
