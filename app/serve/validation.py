"""Checking raw feature values against a model's schema before they reach the gate and the network.

A malformed value raises ``SchemaError(field, reason)`` with the field located as the protocol names it
(``instances[3].creatinine`` on /v1, ``inputs.creatinine[3]`` on /v2). A well-formed value the model has not
seen (a missing value where training had none, an unseen category, a number outside the training range or
the plausible bounds) is no error: the gate refers or rejects that row alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app.checkpoint.manifest import Manifest
from app.data.schema import FeatureKind
from app.errors import SchemaError

Locate = Callable[[str, int], str]  # (feature, row) -> the field as the client named it


def _check_numeric(value: object, field: str) -> None:
    if value is None:
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


RawValues = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # Preprocessing.raw_values: numeric, codes


def validate_columns(manifest: Manifest, columns: Mapping[str, Sequence[object]], locate: Locate) -> RawValues:
    """Raw columns (feature -> N values) checked value by value -> the checked raw values (numeric (N,)
    float64 with NaN where missing, category codes (N,) with -1 where unseen), as ``Preprocessing.raw_values``."""
    for spec in manifest.features:
        values = columns[spec.name]
        if spec.kind is FeatureKind.NUMERIC:
            for row, value in enumerate(values):
                _check_numeric(value, locate(spec.name, row))
        else:
            categories = spec.categories or []
            for row, value in enumerate(values):
                _check_categorical(value, categories, locate(spec.name, row))
    return manifest.preprocessing.raw_values(columns)


def encode_scored(
    manifest: Manifest, raw: RawValues, scored: np.ndarray, columns: Mapping[str, Sequence[object]], locate: Locate
) -> np.ndarray:
    """The network input of the rows the gate lets through (``scored``: (N,) bool) -> x (N_scored, d) float32."""
    numeric, codes = raw
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused below, by field
        x = manifest.preprocessing.encode(numeric, codes)
    rows, cols = np.nonzero(~np.isfinite(x) & scored[:, None])
    if rows.size:  # a finite number so large that its standardised value overflows float32: NaN scores otherwise
        row, name = int(rows[0]), manifest.preprocessing.output_names[int(cols[0])]
        raise SchemaError(locate(name, row), f"{columns[name][row]!r} is out of range for this feature's float32 input")
    return x[scored]
