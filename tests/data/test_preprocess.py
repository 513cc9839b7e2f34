from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from app.data.preprocess import MISSING_CODE, MISSING_LEVEL, CategoricalTransform, Preprocessing, infer_feature_specs
from app.data.schema import FeatureError, FeatureKind, FeatureSpec
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
    (c,) = infer_feature_specs(frame, ["c"])  # a missing category is its own level, not an error
    assert c.categories == ["a", "b"] and c.missing_allowed
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


def test_a_missing_column_or_unequal_lengths_name_the_feature(fitted: tuple[Preprocessing, list[FeatureSpec]]) -> None:
    p, _ = fitted
    with pytest.raises(SchemaError, match="missing feature") as info:
        p.raw_values({"x": [1.0], "k": [5]})
    assert info.value.field == "color"
    with pytest.raises(SchemaError, match="expected 2") as info:
        p.raw_values({"x": [1.0, 2.0], "k": [5], "color": ["red"]})
    assert info.value.field == "k"


@pytest.mark.parametrize(
    ("columns", "feature", "row", "reason"),
    [
        ({"x": [1.0, np.inf], "k": [5, 5], "color": ["red", "red"]}, "x", 1, "expected a finite number, got inf"),
        ({"x": np.array([1.0, -np.inf]), "k": [5, 5], "color": ["red", "red"]}, "x", 1, "finite number, got -inf"),
        ({"x": [1.0], "k": [np.nan], "color": ["red"]}, "k", 0, "expected a finite number, got nan"),
        ({"x": [10**400], "k": [5], "color": ["red"]}, "x", 0, "an integer beyond the float64 range"),
        ({"x": [1.0, "abc"], "k": [5, 5], "color": ["red", "red"]}, "x", 1, "expected a number, got str 'abc'"),
        ({"x": [1.0], "k": ["5"], "color": ["red"]}, "k", 0, "expected a number, got str '5'"),
        ({"x": [1.0], "k": [True], "color": ["red"]}, "k", 0, "expected a number, got bool True"),
        ({"x": [1.0], "k": [[5]], "color": ["red"]}, "k", 0, "expected a number, got list [5]"),
        ({"x": [1.0, 2.0], "k": [5, 5], "color": ["red", 3]}, "color", 1, "as a string, got int 3"),
    ],
)
def test_every_value_is_checked_once_and_located(
    fitted: tuple[Preprocessing, list[FeatureSpec]], columns: dict, feature: str, row: int, reason: str
) -> None:
    """raw_values, the one check the server and the training side share, names the feature and the row."""
    p, _ = fitted
    for check in (p.raw_values, p.transform):
        with pytest.raises(FeatureError) as info:
            check(columns)
        assert (info.value.feature, info.value.row) == (feature, row)
        assert reason in info.value.reason
        assert str(info.value).startswith(f"{feature}[{row}]: ")


def test_an_unseen_value_is_coded_for_the_gate_and_refused_by_transform(
    fitted: tuple[Preprocessing, list[FeatureSpec]],
) -> None:
    p, _ = fitted
    numeric, codes = p.raw_values({"x": [1.0, 1.0], "k": [None, 5], "color": ["purple", None]})
    assert np.isnan(numeric["k"][0]) and codes["color"].tolist() == [-1, MISSING_CODE]  # the gate refers both rows
    cases = [
        ({"x": [1.0], "k": [5], "color": ["purple"]}, "color", "unknown category 'purple'; expected one of"),
        ({"x": [1.0], "k": [5], "color": [None]}, "color", "had no missing values in training"),
        ({"x": [1.0], "k": np.array([np.nan]), "color": ["red"]}, "k", "had no missing values in training"),
        ({"x": [1.0], "k": [None], "color": ["red"]}, "k", "had no missing values in training"),
    ]
    for columns, feature, reason in cases:
        with pytest.raises(FeatureError, match=reason) as info:
            p.transform(columns)
        assert (info.value.feature, info.value.row) == (feature, 0)


def test_a_category_missing_in_training_gets_its_own_level(train: pd.DataFrame) -> None:
    frame = train.assign(color=["red", None, "red", "green", np.nan])
    specs = infer_feature_specs(frame, ["x", "k", "color"])
    p = Preprocessing.fit(frame, specs)
    (color,) = p.categorical
    assert color.missing_level and color.levels == ["green", "red", MISSING_LEVEL]
    assert p.output_names[-3:] == ["color=green", "color=red", "color=<missing>"]
    x = p.encode(*p.raw_values({"x": [1.0, 1.0, 1.0], "k": [5, 5, 5], "color": [None, "red", "blue"]}))
    np.testing.assert_array_equal(x[:, -3:], [[0, 0, 1], [0, 1, 0], [0, 0, 0]])  # blue: unseen, all zeros
    assert p.raw_values({"x": [1.0], "k": [5], "color": [None]})[1]["color"].tolist() == [2]  # not unseen
    np.testing.assert_array_equal(p.transform(frame)[[1, 4], -1], [1.0, 1.0])  # None and NaN in a table
    assert Preprocessing.model_validate_json(p.model_dump_json()) == p
    assert '"missing_level": true' in p.model_dump_json(indent=1)
    with pytest.raises(DataError, match="color: has missing values"):
        Preprocessing.fit(frame, [*specs[:2], specs[2].model_copy(update={"missing_allowed": False})])
    with pytest.raises(ValidationError, match="names the missing level"):
        CategoricalTransform(name="c", categories=["a", MISSING_LEVEL], missing_level=True)


def test_without_missing_categories_the_manifest_section_is_unchanged(
    fitted: tuple[Preprocessing, list[FeatureSpec]],
) -> None:
    """Checkpoints written before the missing level existed load and serialise byte for byte as before."""
    p, _ = fitted
    assert "missing_level" not in p.model_dump_json()
    old = '{"numeric": [], "categorical": [{"name": "c", "categories": ["a", "b"]}]}'
    q = Preprocessing.model_validate_json(old)
    assert not q.categorical[0].missing_level and q.n_outputs == 2


def test_fit_refuses_missing_when_not_allowed(train: pd.DataFrame) -> None:
    specs = [FeatureSpec(name="x", kind=FeatureKind.NUMERIC)]
    with pytest.raises(DataError, match="x: has missing values"):
        Preprocessing.fit(train, specs)
