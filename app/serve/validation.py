"""Checking raw feature values against a model's schema before they reach the network.

Each problem raises ``SchemaError(field, reason)`` with the field located as the protocol names it
(``instances[3].creatinine`` on /v1, ``inputs.creatinine[3]`` on /v2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app.checkpoint.manifest import Manifest
from app.data.schema import FeatureKind
from app.errors import SchemaError

Locate = Callable[[str, int], str]  # (feature, row) -> the field as the client named it


def _check_numeric(value: object, allow_missing: bool, field: str) -> None:
    if value is None:
        if not allow_missing:
            raise SchemaError(field, "missing value (null); this feature had no missing values in training")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(field, f"expected a number, got {type(value).__name__} {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float64 range
        raise SchemaError(field, "expected a finite number, got an integer beyond the float64 range") from None
    if not finite:
        raise SchemaError(field, f"expected a finite number, got {value}")


def _check_categorical(value: object, categories: list[str], field: str) -> None:
    if not isinstance(value, str):
        raise SchemaError(field, f"expected one of {categories} as a string, got {type(value).__name__} {value!r}")
    if value not in categories:
        raise SchemaError(field, f"unknown category '{value}'; expected one of {categories}")


def validate_columns(manifest: Manifest, columns: Mapping[str, Sequence[object]], locate: Locate) -> np.ndarray:
    """Raw columns (feature -> N values) checked value by value, then preprocessed: -> x (N, d) float32."""
    for spec in manifest.features:
        values = columns[spec.name]
        if spec.kind is FeatureKind.NUMERIC:
            for row, value in enumerate(values):
                _check_numeric(value, spec.missing_allowed, locate(spec.name, row))
        else:
            categories = spec.categories or []
            for row, value in enumerate(values):
                _check_categorical(value, categories, locate(spec.name, row))
    with np.errstate(over="ignore"):  # an overflow to inf is refused below, by field
        x = manifest.preprocessing.transform(columns)
    rows, cols = np.nonzero(~np.isfinite(x))
    if rows.size:  # a finite number so large that its standardised value overflows float32: NaN scores otherwise
        row, name = int(rows[0]), manifest.preprocessing.output_names[int(cols[0])]
        raise SchemaError(locate(name, row), f"{columns[name][row]!r} is out of range for this feature's float32 input")
    return x
