"""The built-in stress suite (app.evaluate.stress): which shifts, which rows, which values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.data.schema import FeatureKind, FeatureSpec
from app.evaluate.stress import conversions, stress_sets


def _numeric(name: str, unit: str | None = None, minimum: float = 0.0, maximum: float = 10.0) -> FeatureSpec:
    return FeatureSpec(
        name=name, kind=FeatureKind.NUMERIC, minimum=minimum, maximum=maximum, unit=unit, missing_allowed=True
    )


def test_conversions_follow_the_unit_and_the_analyte() -> None:
    assert conversions(_numeric("age", "years")) == [("months", 12.0), ("days", 365.25)]
    assert conversions(_numeric("serum_creatinine", "mg/dL")) == [("g/L", 0.01), ("umol/L", 88.4)]  # not ×10
    assert conversions(_numeric("glucose", "mg/dL")) == [("g/L", 0.01), ("mmol/L", 0.0555)]
    assert conversions(_numeric("x1")) == [] and conversions(_numeric("x1", "furlongs")) == []


def test_the_suite_shifts_only_rows_the_shift_changes() -> None:
    test = pd.DataFrame({"age": [50.0, 60.0, 65.0], "mgus": [0.0, 1.0, np.nan], "sex": ["F", "M", "F"]})
    train = pd.DataFrame({"age": [50.0, 55.0, 58.0, 60.0, 69.0], "mgus": [0.0, 0.0, 0.0, 0.0, 1.0], "sex": ["F"] * 5})
    features = [
        _numeric("age", "years", 50, 69),
        _numeric("mgus", None, 0, 1),
        FeatureSpec(name="sex", kind=FeatureKind.CATEGORICAL, categories=["F", "M"]),
    ]
    sets = {s.name: s for s in stress_sets(test, train, features)}
    assert set(sets) == {
        "x10:age",
        "x0.1:age",
        "unit:age:months",
        "unit:age:days",
        "x10:mgus",
        "x0.1:mgus",
        "all-x10",
        "above-range:age",
        "below-range:age",
        "above-range:mgus",
        "below-range:mgus",
    }
    assert sets["unit:age:months"].frame["age"].tolist() == [600.0, 720.0, 780.0]
    assert sets["unit:age:months"].description == "age sent in months instead of years (×12)"
    # mgus ×10 changes the one row with mgus = 1: zero and missing stay what they were, so they are left out.
    assert sets["x10:mgus"].frame.to_dict("list") == {"age": [60.0], "mgus": [10.0], "sex": ["M"]}
    assert len(sets["all-x10"].frame) == 3 and sets["all-x10"].frame["age"].tolist() == [500.0, 600.0, 650.0]
    # 3 IQRs (of the training split) beyond the training range.
    q1, q3 = np.quantile(train["age"], [0.25, 0.75])
    assert sets["above-range:age"].frame["age"].unique().tolist() == [pytest.approx(69 + 3 * (q3 - q1))]
    # A binary feature has IQR 0 here: its range stands in.
    assert sets["below-range:mgus"].frame["mgus"].unique().tolist() == [pytest.approx(0 - 3 * 1.0)]
