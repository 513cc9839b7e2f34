"""Preprocessing fitted on the training split only and stored as JSON next to the weights.

Raw columns are checked once, value by value, by `Preprocessing.raw_values` (a number, finite, a category
string; a `FeatureError` names the feature and the row), then `Preprocessing.encode` maps the checked values to
exactly the tensor the network saw; both need numpy only. `fit` and `infer_feature_specs` (training side)
accept a pandas DataFrame. A categorical feature that had missing values in training encodes them as its own
level, `MISSING_LEVEL`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from app.data.schema import FeatureError, FeatureKind, FeatureSpec, PlausibleRange
from app.errors import DataError, SchemaError

MISSING_LEVEL = "<missing>"  # the one-hot level of a missing category, column f"{name}=<missing>"

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
    """One-hot encoding over the training categories, columns named `f"{name}={category}"`; with
    `missing_level` (the feature had missing values in training) a last column `f"{name}=<missing>"` marks a
    missing value. An unseen category, or a missing value without that level, encodes as all zeros."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    categories: list[str] = Field(min_length=1)
    missing_level: bool = False

    @model_validator(mode="after")
    def _reserved(self) -> CategoricalTransform:
        if self.missing_level and MISSING_LEVEL in self.categories:
            raise ValueError(f"{self.name}: '{MISSING_LEVEL}' names the missing level; it cannot be a category")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_level(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Manifests written before the missing level existed stay byte-identical when retrained.
        data = handler(self)
        if not self.missing_level:
            data.pop("missing_level", None)
        return data

    @property
    def levels(self) -> list[str]:
        """The one-hot levels in column order."""
        return [*self.categories, MISSING_LEVEL] if self.missing_level else list(self.categories)


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
            names.extend(f"{c.name}={level}" for level in c.levels)
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
            categories = list(spec.categories or [])
            try:
                if spec.kind is FeatureKind.NUMERIC:
                    x = _numeric_values(spec.name, frame[spec.name])
                    missing = np.isnan(x)
                else:
                    codes = _category_codes(spec.name, frame[spec.name], categories, missing_code=len(categories))
                    missing = codes == len(categories)
                    if (codes < 0).any():
                        raise DataError(f"{spec.name}: training values outside its categories {spec.categories}")
            except SchemaError as err:  # bad training data is a data problem, not a request problem
                raise DataError(str(err)) from err
            if missing.any() and not spec.missing_allowed:
                raise DataError(f"{spec.name}: has missing values but its FeatureSpec says missing_allowed=False")
            if spec.kind is FeatureKind.CATEGORICAL:
                categorical.append(
                    CategoricalTransform(name=spec.name, categories=categories, missing_level=spec.missing_allowed)
                )
                continue
            observed = x[~missing]
            if observed.size == 0:
                raise DataError(f"{spec.name}: numeric feature has no non-missing values in training")
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
        """Raw columns (feature name -> N values) -> the (N, d) float32 input, for training and evaluation
        tables: ``raw_values``, then FeatureError on a missing value where training had none and on an unseen
        category (the server refers such rows through the gate instead), then ``encode``."""
        numeric, codes = self.raw_values(columns)
        for t in self.numeric:
            missing = np.flatnonzero(np.isnan(numeric[t.name]))
            if not t.missing_indicator and missing.size:
                raise FeatureError(
                    t.name, int(missing[0]), "missing value; this feature had no missing values in training"
                )
        for c in self.categorical:
            unseen = np.flatnonzero(codes[c.name] < 0)
            if unseen.size:
                row = int(unseen[0])
                value = list(columns[c.name])[row]
                if _is_missing(value):
                    raise FeatureError(c.name, row, "missing value; this feature had no missing values in training")
                raise FeatureError(c.name, row, f"unknown category '{value}'; expected one of {c.categories}")
        return self.encode(numeric, codes)

    def raw_values(
        self, columns: Mapping[str, Sequence[object] | np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The one check of raw columns: (numeric values (N,) float64 with NaN where missing, category codes
        (N,) int64 into the levels, -1 for an unseen category, MISSING_CODE for a missing one without a missing
        level), per feature.

        SchemaError(feature, reason) on a missing feature or unequal lengths; FeatureError(feature, row,
        reason) on a value that is not a number, not finite, or (categorical) not a string. A plain sequence
        (as JSON decodes) must hold numbers, strings or None (missing); a table's column (a numpy array or a
        pandas Series) is read as tables are: NaN or NA is missing and categories compare as strings.
        """
        names = [t.name for t in self.numeric] + [t.name for t in self.categorical]
        for name in names:
            if name not in columns:
                raise SchemaError(name, "missing feature")
        n = len(columns[names[0]])
        for name in names:
            if len(columns[name]) != n:
                raise SchemaError(name, f"column has {len(columns[name])} values; expected {n}")
        numeric = {t.name: _numeric_values(t.name, columns[t.name]) for t in self.numeric}
        codes = {
            c.name: _category_codes(
                c.name, columns[c.name], c.categories, len(c.categories) if c.missing_level else MISSING_CODE
            )
            for c in self.categorical
        }
        return numeric, codes

    def encode(self, numeric: Mapping[str, np.ndarray], codes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Checked raw values (as ``raw_values`` returns them) -> the (N, d) float32 input.

        A missing number is imputed with the training median (and marked in its indicator column, if the
        feature has one); a missing category sets its missing level; an unseen category (code -1) encodes as
        all-zero one-hot columns. The gate refers a missing value where training had none and an unseen
        category (support), so whatever the network answers for such a row is never accepted unseen.
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
            onehot = np.zeros((code.size, len(c.levels)), dtype=np.float64)
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


def _number(name: str, row: int, value: object, nan_is_missing: bool) -> float:
    """One raw value -> float64 (NaN when missing); FeatureError unless a finite real number or missing."""
    if value is None or (nan_is_missing and _is_missing(value)):
        return math.nan
    if isinstance(value, _BOOL) or not isinstance(value, _REAL):
        raise FeatureError(name, row, f"expected a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float64 range
        raise FeatureError(name, row, "expected a finite number, got an integer beyond the float64 range") from None
    if not math.isfinite(number):
        raise FeatureError(name, row, f"expected a finite number, got {number}")
    return number


_PLAIN = {int, float, type(None)}


def _plain_numbers(column: Sequence[object]) -> np.ndarray | None:
    """The fast path of a plain sequence (as JSON decodes): only ints, floats and None, every number finite ->
    (N,) float64 with NaN where None; None when anything else is there (the checked path then says what)."""
    kinds = set(map(type, column))  # exact types: a bool (an int subclass) takes the checked path
    if not kinds <= _PLAIN:
        return None
    gaps = type(None) in kinds
    try:
        x = np.array([math.nan if v is None else v for v in column] if gaps else column, dtype=np.float64)
    except OverflowError:  # an int beyond the float64 range
        return None
    finite = np.isfinite(x)
    if gaps:
        finite |= np.fromiter((v is None for v in column), dtype=bool, count=len(column))
    return x if finite.all() else None


def _numeric_values(name: str, column: Any) -> np.ndarray:
    """A column -> (N,) float64 values with NaN where missing.

    Numeric numpy arrays and pandas Series take a vectorised path (NaN and NA are missing); plain sequences
    (JSON lists) keep their Python types and are checked per value (None is missing; a string, a bool, NaN or
    an infinity is an error), as are object arrays (NaN is missing there).
    """
    if hasattr(column, "to_numpy"):  # pandas Series, including nullable dtypes (pd.NA -> NaN)
        try:
            column = column.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            column = column.to_numpy()
    if not isinstance(column, np.ndarray):
        plain = _plain_numbers(column)
        if plain is not None:
            return plain
        return np.array([_number(name, row, v, nan_is_missing=False) for row, v in enumerate(column)], dtype=np.float64)
    if column.ndim != 1:
        raise SchemaError(name, f"expected a 1-D column, got shape {column.shape}")
    if column.dtype.kind not in "iuf":
        values = column.astype(object).tolist()
        return np.array([_number(name, row, v, nan_is_missing=True) for row, v in enumerate(values)], dtype=np.float64)
    x = column.astype(np.float64)
    inf = np.flatnonzero(np.isinf(x))
    if inf.size:
        raise FeatureError(name, int(inf[0]), f"expected a finite number, got {x[int(inf[0])]}")
    return x


MISSING_CODE = -2  # a missing category of a feature without a missing level (encoded, like -1, as all zeros)


def _category_codes(name: str, column: Any, categories: list[str], missing_code: int) -> np.ndarray:
    """A column -> (N,) int64 index into `categories` (-1 for a value not among them, ``missing_code`` for a
    missing one). A plain sequence must hold strings or None; a table's column compares values as strings
    (NaN or NA missing)."""
    table = hasattr(column, "dtype")
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    lookup = {cat: i for i, cat in enumerate(categories)}
    codes = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value is None or (table and _is_missing(value)):
            codes[row] = missing_code
        elif table or isinstance(value, str):
            codes[row] = lookup.get(str(value), -1)
        else:
            reason = f"expected one of {categories} as a string, got {type(value).__name__} {value!r}"
            raise FeatureError(name, row, reason)
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
            missing = series.isna()
            cats = sorted({str(v) for v in series[~missing].tolist()})
            if not cats:
                raise DataError(f"{name}: categorical feature has no values")
            # Missing values become their own level (MISSING_LEVEL) when the preprocessing is fitted.
            specs.append(
                FeatureSpec(
                    name=name, kind=FeatureKind.CATEGORICAL, categories=cats, missing_allowed=bool(missing.any())
                )
            )
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


def described_specs(
    frame: Any,
    features: list[str],
    categorical: list[str],
    info: Mapping[str, tuple[str | None, str]],
    plausible: Mapping[str, PlausibleRange],
) -> list[FeatureSpec]:
    """:func:`infer_feature_specs` of a bundled data set's training split, each with its unit and description
    (``info``: name -> (unit, description)) and its physically possible values (``plausible``, where known)."""
    specs = infer_feature_specs(frame, features, categorical=categorical)
    described = [
        {"unit": info[s.name][0], "description": info[s.name][1], "plausible": plausible.get(s.name)} for s in specs
    ]
    return [spec.model_copy(update=update) for spec, update in zip(specs, described, strict=True)]
