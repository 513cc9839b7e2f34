from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from app.data.preprocess import Preprocessing, infer_feature_specs
from app.data.schema import FeatureKind, FeatureSpec
from app.errors import DataError, SchemaError

pd = pytest.importorskip("pandas")


@pytest.fixture
def train() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, np.nan, 4.0],
            "k": [5, 5, 5, 5, 5],  # constant: std falls back to 1.0
            "color": ["red", "blue", "red", "green", "blue"],
        }
    )


@pytest.fixture
def fitted(train: pd.DataFrame) -> tuple[Preprocessing, list[FeatureSpec]]:
    specs = infer_feature_specs(train, ["x", "k", "color"])
    return Preprocessing.fit(train, specs), specs


def test_infer_specs(fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    _, specs = fitted
    x, k, color = specs
    assert (x.kind, x.minimum, x.maximum, x.missing_allowed) == (FeatureKind.NUMERIC, 1.0, 4.0, True)
    assert (k.kind, k.missing_allowed) == (FeatureKind.NUMERIC, False)
    assert color.kind is FeatureKind.CATEGORICAL and color.categories == ["blue", "green", "red"]


def test_infer_specs_categorical_override_and_errors() -> None:
    frame = pd.DataFrame({"grp": [1, 2, 2], "flag": [True, False, True], "c": ["a", None, "b"], "e": [np.nan] * 3})
    grp, flag = infer_feature_specs(frame, ["grp", "flag"], categorical=["grp"])
    assert grp.categories == ["1", "2"] and flag.categories == ["False", "True"]
    with pytest.raises(DataError, match="c: categorical feature has missing values; fill them first"):
        infer_feature_specs(frame, ["c"])
    with pytest.raises(DataError, match="e: numeric feature has no non-missing values"):
        infer_feature_specs(frame, ["e"])


def test_feature_spec_validation() -> None:
    with pytest.raises(ValidationError):
        FeatureSpec(name="c", kind=FeatureKind.CATEGORICAL, categories=[])
    with pytest.raises(ValidationError):
        FeatureSpec(name="c", kind=FeatureKind.CATEGORICAL, categories=["a", "a"])
    with pytest.raises(ValidationError):
        FeatureSpec(name="c", kind=FeatureKind.CATEGORICAL, categories=["a"], minimum=0.0)
    with pytest.raises(ValidationError):
        FeatureSpec(name="n", kind=FeatureKind.NUMERIC, categories=["a"])
    with pytest.raises(ValidationError):
        FeatureSpec(name="n", kind="numeric", extra=1)


def test_fit_params_and_output_names(fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    p, _ = fitted
    x, k = p.numeric
    assert x.impute == 2.5 and x.mean == 2.5 and math.isclose(x.std, math.sqrt(1.25)) and x.missing_indicator
    assert k.mean == 5.0 and k.std == 1.0 and not k.missing_indicator
    assert p.output_names == ["x", "x__missing", "k", "color=blue", "color=green", "color=red"]
    assert p.n_outputs == 6


def test_transform_hand_computed(fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    p, _ = fitted
    out = p.transform({"x": [4.0, None], "k": np.array([7, 5]), "color": ["green", "red"]})
    s = math.sqrt(1.25)
    expected = np.array(
        [
            [(4.0 - 2.5) / s, 0.0, 2.0, 0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0, 1.0],  # missing x -> median 2.5 -> 0 after standardising
        ],
        dtype=np.float32,
    )
    assert out.dtype == np.float32 and out.shape == (2, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # NaN counts as missing too, and a DataFrame works as the mapping.
    frame = pd.DataFrame({"x": [np.nan], "k": [5], "color": ["red"]})
    np.testing.assert_allclose(p.transform(frame), expected[1:2], rtol=1e-6)


def test_json_round_trip(fitted: tuple[Preprocessing, list[FeatureSpec]], train: pd.DataFrame) -> None:
    p, _ = fitted
    q = Preprocessing.model_validate_json(p.model_dump_json())
    assert q == p
    np.testing.assert_array_equal(q.transform(train), p.transform(train))


def test_fit_uses_training_data_only(train: pd.DataFrame, fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    p, specs = fitted
    val = pd.DataFrame({"x": [100.0, 200.0], "k": [-3, 9], "color": ["red", "red"]})
    # Transforming other data never changes the fitted parameters, and refitting the train split is stable.
    p.transform(val)
    assert Preprocessing.fit(train, specs) == p
    assert Preprocessing.fit(val, specs) != p
    assert p.numeric[0].mean == 2.5


@pytest.mark.parametrize(
    ("columns", "field", "reason"),
    [
        ({"x": [1.0], "k": [5]}, "color", "missing feature"),
        ({"x": [1.0], "k": [5], "color": ["purple"]}, "color", "unknown category 'purple'"),
        ({"x": [1.0], "k": [5], "color": [None]}, "color", "missing value"),
        ({"x": [1.0], "k": [np.nan], "color": ["red"]}, "k", "had no missing values in training"),
        ({"x": [1.0], "k": [None], "color": ["red"]}, "k", "had no missing values in training"),
        ({"x": [1.0, np.inf], "k": [5, 5], "color": ["red", "red"]}, "x", "non-finite value inf at row 1"),
        ({"x": [1.0, "abc"], "k": [5, 5], "color": ["red", "red"]}, "x", "non-numeric value 'abc' at row 1"),
        ({"x": [1.0], "k": ["5"], "color": ["red"]}, "k", "non-numeric value '5' at row 0"),
        ({"x": [1.0], "k": [True], "color": ["red"]}, "k", "non-numeric value True at row 0"),
        ({"x": [1.0, 2.0], "k": [5], "color": ["red"]}, "k", "expected 2"),
    ],
)
def test_schema_errors(fitted: tuple[Preprocessing, list[FeatureSpec]], columns: dict, field: str, reason: str) -> None:
    p, _ = fitted
    with pytest.raises(SchemaError) as info:
        p.transform(columns)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}: ")


def test_unknown_category_lists_expected(fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    p, _ = fitted
    with pytest.raises(SchemaError, match=r"expected one of \['blue', 'green', 'red'\]"):
        p.transform({"x": [1.0], "k": [5], "color": ["purple"]})


def test_fit_refuses_missing_when_not_allowed(train: pd.DataFrame) -> None:
    specs = [FeatureSpec(name="x", kind=FeatureKind.NUMERIC)]
    with pytest.raises(DataError, match="x: has missing values"):
        Preprocessing.fit(train, specs)
