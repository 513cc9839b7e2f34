"""Preprocessing fitted on the training split only and stored as JSON next to the weights.

The server maps a raw record to exactly the tensor the network saw with `Preprocessing.transform`, which
needs numpy only; `fit` and `infer_feature_specs` (training side) accept a pandas DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.data.schema import FeatureKind, FeatureSpec
from app.errors import DataError, SchemaError

_REAL = (int, float, np.integer, np.floating)
_BOOL = (bool, np.bool_)


class NumericTransform(BaseModel):
    """Impute (training median), then standardise `(x - mean) / std`; optionally a 0/1 missing indicator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    impute: float
    mean: float
    std: float = Field(gt=0)
    missing_indicator: bool = False

    @model_validator(mode="after")
    def _finite(self) -> NumericTransform:
        if not all(math.isfinite(v) for v in (self.impute, self.mean, self.std)):
            raise ValueError(f"{self.name}: impute, mean and std must be finite")
        return self


class CategoricalTransform(BaseModel):
    """One-hot encoding over the training categories, columns named `f"{name}={category}"`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    categories: list[str] = Field(min_length=1)


class Preprocessing(BaseModel):
    """Raw columns -> (N, d) float32 network input: numeric columns first, then one-hot columns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    numeric: list[NumericTransform]
    categorical: list[CategoricalTransform]

    @model_validator(mode="after")
    def _unique(self) -> Preprocessing:
        names = [t.name for t in self.numeric] + [t.name for t in self.categorical]
        if not names:
            raise ValueError("preprocessing needs at least one feature")
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return self

    @property
    def output_names(self) -> list[str]:
        """Names of the d output columns, in order."""
        names: list[str] = []
        for t in self.numeric:
            names.append(t.name)
            if t.missing_indicator:
                names.append(f"{t.name}__missing")
        for c in self.categorical:
            names.extend(f"{c.name}={cat}" for cat in c.categories)
        return names

    @property
    def n_outputs(self) -> int:
        """d, the network's input width."""
        return len(self.output_names)

    @classmethod
    def fit(cls, frame: Any, features: list[FeatureSpec]) -> Preprocessing:
        """Fit on the training split: `frame[name]` gives a column (pandas DataFrame or mapping of arrays)."""
        if not features:
            raise DataError("no features to fit the preprocessing on")
        numeric: list[NumericTransform] = []
        categorical: list[CategoricalTransform] = []
        for spec in features:
            if spec.name not in frame:
                raise DataError(f"{spec.name}: missing from the training table")
            try:
                if spec.kind is FeatureKind.NUMERIC:
                    x, missing = _numeric_values(spec.name, frame[spec.name])
                elif (_category_codes(spec.name, frame[spec.name], spec.categories or []) < 0).any():
                    raise DataError(f"{spec.name}: training values outside its categories {spec.categories}")
            except SchemaError as err:  # bad training data is a data problem, not a request problem
                raise DataError(str(err)) from err
            if spec.kind is FeatureKind.CATEGORICAL:
                categorical.append(CategoricalTransform(name=spec.name, categories=list(spec.categories or [])))
                continue
            observed = x[~missing]
            if observed.size == 0:
                raise DataError(f"{spec.name}: numeric feature has no non-missing values in training")
            if missing.any() and not spec.missing_allowed:
                raise DataError(f"{spec.name}: has missing values but its FeatureSpec says missing_allowed=False")
            std = float(observed.std())
            numeric.append(
                NumericTransform(
                    name=spec.name,
                    impute=float(np.median(observed)),
                    mean=float(observed.mean()),
                    # A constant training column carries no scale; 1.0 keeps the transform a pure shift.
                    std=std if std > 0 and math.isfinite(std) else 1.0,
                    missing_indicator=spec.missing_allowed,
                )
            )
        return cls(numeric=numeric, categorical=categorical)

    def typical_input(self) -> np.ndarray:
        """(1, d) input of a record at the training medians and each categorical's first category (used to
        warm up and to validate exports)."""
        columns: dict[str, list[object]] = {t.name: [t.impute] for t in self.numeric}
        columns.update({t.name: [t.categories[0]] for t in self.categorical})
        return self.transform(columns)

    def transform(self, columns: Mapping[str, Sequence[object] | np.ndarray]) -> np.ndarray:
        """Map raw columns (feature name -> N values) to the (N, d) float32 input; raise SchemaError on bad data,
        on a missing value where training had none and on an unseen category."""
        numeric, codes = self.raw_values(columns)
        for t in self.numeric:
            if not t.missing_indicator and np.isnan(numeric[t.name]).any():
                raise SchemaError(t.name, "missing value; this feature had no missing values in training")
        for c in self.categorical:
            unseen = np.flatnonzero(codes[c.name] < 0)
            if unseen.size:
                value = columns[c.name][int(unseen[0])]
                raise SchemaError(c.name, f"unknown category '{value}'; expected one of {c.categories}")
        return self.encode(numeric, codes)

    def raw_values(
        self, columns: Mapping[str, Sequence[object] | np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw columns -> (numeric values (N,) float64 with NaN where missing, category codes (N,) int64 with -1
        for an unseen category), per feature; SchemaError on a missing feature, unequal lengths, a non-numeric
        or infinite number, or a missing category."""
        names = [t.name for t in self.numeric] + [t.name for t in self.categorical]
        for name in names:
            if name not in columns:
                raise SchemaError(name, "missing feature")
        n = len(columns[names[0]])
        for name in names:
            if len(columns[name]) != n:
                raise SchemaError(name, f"column has {len(columns[name])} values; expected {n}")
        numeric = {t.name: _numeric_values(t.name, columns[t.name])[0] for t in self.numeric}
        codes = {c.name: _category_codes(c.name, columns[c.name], c.categories) for c in self.categorical}
        return numeric, codes

    def encode(self, numeric: Mapping[str, np.ndarray], codes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Checked raw values (as ``raw_values`` returns them) -> the (N, d) float32 input.

        A missing value is imputed with the training median (and marked in its indicator column, if the
        feature has one); an unseen category (code -1) encodes as all-zero one-hot columns. The gate refers
        both (support), so whatever the network answers for such a row is never accepted unseen.
        """
        blocks: list[np.ndarray] = []
        for t in self.numeric:
            x = numeric[t.name]
            missing = np.isnan(x)
            blocks.append(((np.where(missing, t.impute, x) - t.mean) / t.std)[:, None])
            if t.missing_indicator:
                blocks.append(missing.astype(np.float64)[:, None])
        for c in self.categorical:
            code = codes[c.name]
            onehot = np.zeros((code.size, len(c.categories)), dtype=np.float64)
            known = np.flatnonzero(code >= 0)
            onehot[known, code[known]] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _is_missing(value: object) -> bool:
    """None, NaN (float or numpy), or pandas' NA/NaT."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN-like values are the ones not equal to themselves
    except TypeError:  # pandas.NA refuses bool()
        return True


def _numeric_code(value: object) -> int:
    """0: a real number (NaN included), 1: missing, 2: not a number."""
    if isinstance(value, _REAL) and not isinstance(value, _BOOL):
        return 0
    return 1 if _is_missing(value) else 2


def _numeric_values(name: str, column: Any) -> tuple[np.ndarray, np.ndarray]:
    """A column -> (float64 values with NaN where missing, bool missing mask), both (N,).

    Numeric numpy arrays and pandas Series take a vectorised path; lists and object arrays are type-checked
    per value (a string or bool is an error, None/NaN is missing).
    """
    if hasattr(column, "to_numpy"):  # pandas Series, including nullable dtypes (pd.NA -> NaN)
        try:
            column = column.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            column = column.to_numpy()
    # Plain sequences (JSON lists) keep their Python types, so strings and bools are caught rather than coerced.
    arr = column if isinstance(column, np.ndarray) else np.array(column, dtype=object)
    if arr.ndim != 1:
        raise SchemaError(name, f"expected a 1-D column, got shape {arr.shape}")
    if arr.dtype.kind in "iuf":
        x = arr.astype(np.float64)
    else:
        # Object columns (e.g. JSON lists with None) need a per-value type check; strings and bools are rejected.
        arr = arr.astype(object)
        codes = np.frompyfunc(_numeric_code, 1, 1)(arr).astype(np.int8) if arr.size else np.zeros(0, np.int8)
        bad = np.flatnonzero(codes == 2)
        if bad.size:
            row = int(bad[0])
            raise SchemaError(name, f"non-numeric value {arr[row]!r} at row {row}")
        x = np.where(codes == 0, arr, np.nan).astype(np.float64)
    inf = np.flatnonzero(np.isinf(x))
    if inf.size:
        row = int(inf[0])
        raise SchemaError(name, f"non-finite value {x[row]} at row {row}")
    return x, np.isnan(x)


def _category_codes(name: str, column: Any, categories: list[str]) -> np.ndarray:
    """A column -> (N,) int64 index into `categories` (-1 for a value not among them), comparing values as
    strings; SchemaError on a missing value."""
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    lookup = {cat: i for i, cat in enumerate(categories)}
    codes = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if _is_missing(value):
            raise SchemaError(name, f"missing value at row {row}; categorical features cannot be missing")
        codes[row] = lookup.get(str(value), -1)
    return codes


def infer_feature_specs(frame: Any, features: list[str], categorical: list[str] | None = None) -> list[FeatureSpec]:
    """FeatureSpecs from a (training) pandas DataFrame: kinds from dtypes, ranges and categories from values.

    Numeric (non-bool) dtypes are numeric unless listed in `categorical`; object, string, category and bool
    dtypes are categorical with sorted unique string categories.
    """
    import pandas as pd

    categorical_set = set(categorical or [])
    unknown = sorted(categorical_set - set(features))
    if unknown:
        raise DataError(f"categorical columns {unknown} are not among the features")
    specs: list[FeatureSpec] = []
    for name in features:
        if name not in frame.columns:
            raise DataError(f"{name}: no such column")
        series = frame[name]
        dtype = series.dtype
        is_numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if name in categorical_set or not is_numeric:
            if not (
                name in categorical_set
                or pd.api.types.is_string_dtype(dtype)
                or pd.api.types.is_object_dtype(dtype)
                or pd.api.types.is_bool_dtype(dtype)
                or isinstance(dtype, pd.CategoricalDtype)
            ):
                raise DataError(f"{name}: unsupported column type {dtype}; convert it to numbers or strings")
            if series.isna().any():
                raise DataError(f"{name}: categorical feature has missing values; fill them first")
            cats = sorted({str(v) for v in series.tolist()})
            if not cats:
                raise DataError(f"{name}: categorical feature has no values")
            specs.append(FeatureSpec(name=name, kind=FeatureKind.CATEGORICAL, categories=cats))
            continue
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        observed = values[~np.isnan(values)]
        if observed.size == 0:
            raise DataError(f"{name}: numeric feature has no non-missing values")
        if np.isinf(observed).any():
            raise DataError(f"{name}: numeric feature has infinite values")
        specs.append(
            FeatureSpec(
                name=name,
                kind=FeatureKind.NUMERIC,
                minimum=float(observed.min()),
                maximum=float(observed.max()),
                missing_allowed=bool(observed.size < values.size),
            )
        )
    return specs
