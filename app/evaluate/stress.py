"""The built-in stress suite: what clinical pipelines really send, generated from a model's test split.

For every numeric feature: the value ×10 and ×0.1 (a decimal slip or a unit off by ten), the unit conversions
its unit implies (age in months instead of years, creatinine in µmol/L instead of mg/dL), and the value set
3 interquartile ranges beyond the training range on either side; and every numeric feature ×10 at once.
A set keeps only the rows its shift changes (a ×10 leaves a zero or a missing value as it was, so such rows
would be in-distribution rows under another name), and says how many it kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.data.schema import FeatureKind, FeatureSpec

BEYOND_IQRS = 3.0
SCALES = (10.0, 0.1)

# unit -> (other unit, factor): the conversions that need only the unit.
UNIT_CONVERSIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "years": (("months", 12.0), ("days", 365.25)),
    "months": (("years", 1 / 12),),
    "mg/L": (("g/L", 0.001),),
    "mg/dL": (("g/L", 0.01),),
    "g/dL": (("g/L", 10.0),),
    "g/L": (("g/dL", 0.1),),
    "kg": (("lb", 2.20462),),
    "lb": (("kg", 0.453592),),
    "cm": (("in", 0.393701), ("m", 0.01)),
    "m": (("cm", 100.0),),
    "mmHg": (("kPa", 0.133322),),
}
# (analyte in the feature's name, unit) -> (other unit, factor): conversions that depend on the molecule.
ANALYTE_CONVERSIONS: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {
    ("creatinine", "mg/dL"): (("umol/L", 88.4),),
    ("glucose", "mg/dL"): (("mmol/L", 0.0555),),
    ("cholesterol", "mg/dL"): (("mmol/L", 0.02586),),
    ("bilirubin", "mg/dL"): (("umol/L", 17.1),),
    ("urea", "mg/dL"): (("mmol/L", 0.357),),
    ("calcium", "mg/dL"): (("mmol/L", 0.2495),),
    ("hemoglobin", "g/dL"): (("mmol/L", 0.6206),),
}


@dataclass(frozen=True)
class StressSet:
    name: str
    description: str
    frame: pd.DataFrame


def conversions(spec: FeatureSpec) -> list[tuple[str, float]]:
    """The (unit, factor) conversions a numeric feature's unit implies (none without a unit); factors of 10
    and 0.1 are left out, the ×10 and ×0.1 sets cover them."""
    if spec.unit is None:
        return []
    found = list(UNIT_CONVERSIONS.get(spec.unit, ()))
    for (analyte, unit), more in ANALYTE_CONVERSIONS.items():
        if unit == spec.unit and analyte in spec.name.lower():
            found += more
    return [(unit, factor) for unit, factor in found if factor not in SCALES]


def _iqr(values: np.ndarray) -> float:
    """The training IQR, or the range where the IQR is 0 (a binary feature), or 1."""
    observed = values[~np.isnan(values)]
    q1, q3 = np.quantile(observed, [0.25, 0.75])
    spread = q3 - q1 if q3 > q1 else float(observed.max() - observed.min())
    return float(spread) if spread > 0 else 1.0


def stress_sets(test: pd.DataFrame, train: pd.DataFrame, features: list[FeatureSpec]) -> list[StressSet]:
    """The stress suite of a model from its test split (the rows shifted) and training split (the IQRs)."""
    numeric = [f for f in features if f.kind is FeatureKind.NUMERIC]
    sets: list[StressSet] = []

    def scaled(spec: FeatureSpec, factor: float) -> pd.DataFrame:
        values = test[spec.name].to_numpy(dtype=np.float64, na_value=np.nan)
        changed = ~np.isnan(values) & (values != 0)
        frame = test.loc[changed].copy()
        frame[spec.name] = values[changed] * factor
        return frame.reset_index(drop=True)

    for spec in numeric:
        unit = f" {spec.unit}" if spec.unit else ""
        for factor in SCALES:
            sets.append(StressSet(f"x{factor:g}:{spec.name}", f"{spec.name} ×{factor:g}", scaled(spec, factor)))
        for other, factor in conversions(spec):
            description = f"{spec.name} sent in {other} instead of{unit} (×{factor:g})"
            sets.append(StressSet(f"unit:{spec.name}:{other}", description, scaled(spec, factor)))
    every = test.copy()
    changed = np.zeros(len(test), dtype=bool)
    for spec in numeric:
        values = test[spec.name].to_numpy(dtype=np.float64, na_value=np.nan)
        changed |= ~np.isnan(values) & (values != 0)
        every[spec.name] = values * 10.0
    sets.append(StressSet("all-x10", "every numeric feature ×10", every.loc[changed].reset_index(drop=True)))
    for spec in numeric:
        if spec.minimum is None or spec.maximum is None:
            continue
        spread = _iqr(train[spec.name].to_numpy(dtype=np.float64, na_value=np.nan))
        beyond = (("above", spec.maximum + BEYOND_IQRS * spread), ("below", spec.minimum - BEYOND_IQRS * spread))
        for side, value in beyond:
            frame = test.copy()
            frame[spec.name] = value
            description = f"{spec.name} = {value:g}: {BEYOND_IQRS:g} IQRs {side} the training range"
            sets.append(StressSet(f"{side}-range:{spec.name}", description, frame))
    return [s for s in sets if len(s.frame)]
