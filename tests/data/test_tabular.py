from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from app.data.dataset import DataProvenance, load_dataset, stratified_split  # noqa: E402
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.data.tabular import (  # noqa: E402
    MAX_CLASSES,
    MAX_LEVELS,
    check_columns,
    check_target,
    infer_task,
    listed,
    load_table,
)
from app.errors import DataError  # noqa: E402


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[::10] = np.nan  # 10% missing, spread over all splits
    return pd.DataFrame(
        {
            "x": x,
            "count": rng.integers(0, 5, size=n),
            "site": rng.choice(["a", "b", "c"], size=n),
            "grade": rng.integers(1, 4, size=n),
            "outcome": rng.choice(["no", "yes"], size=n, p=[0.7, 0.3]),
        }
    )


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    frame = _table()
    frame.loc[[3, 4], "outcome"] = None  # rows without a target are dropped
    path = tmp_path / "cohort.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def ood_csv(tmp_path: Path) -> Path:
    frame = _table(50, seed=1).drop(columns="outcome")  # no target: y = -1
    frame["x"] = frame["x"] + 5.0
    path = tmp_path / "other_site.csv"
    frame.to_csv(path, index=False)
    return path


def test_csv_inferred_features(csv: Path) -> None:
    ds = load_table(csv, target="outcome", seed=3)
    assert ds.name == "cohort" and ds.labels == ["no", "yes"]
    kinds = {f.name: f.kind for f in ds.features}
    assert kinds == {
        "x": FeatureKind.NUMERIC,
        "count": FeatureKind.NUMERIC,
        "site": FeatureKind.CATEGORICAL,
        "grade": FeatureKind.NUMERIC,
    }
    spec = {f.name: f for f in ds.features}
    assert spec["x"].missing_allowed and not spec["count"].missing_allowed
    assert spec["site"].categories == ["a", "b", "c"]
    rows = ds.provenance.rows
    assert rows["train"] + rows["val"] + rows["test"] == 198
    assert ds.provenance.options["dropped_missing_target"] == 2
    assert ds.provenance.source == f"csv:{csv.resolve()}"
    assert ds.ood == {} and ds.provenance.ood_sets == {}
    for split in (ds.train, ds.val, ds.test):
        assert split.y.dtype == np.int64 and set(np.unique(split.y)) <= {0, 1}
        assert list(split.frame.columns) == ["x", "count", "site", "grade"]
    p = Preprocessing.fit(ds.train.frame, ds.features)
    assert p.transform(ds.test.frame).shape == (rows["test"], p.n_outputs)


def test_categorical_override_and_listed_features(csv: Path) -> None:
    ds = load_table(csv, target="outcome", features=["grade", "site"], categorical=["grade"])
    assert [f.name for f in ds.features] == ["grade", "site"]
    assert ds.features[0].kind is FeatureKind.CATEGORICAL and ds.features[0].categories == ["1", "2", "3"]


def test_errors(csv: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: no such column"):
        load_table(csv, target="outcome", features=["x", "nope"])
    with pytest.raises(DataError, match="target column"):
        load_table(csv, target="missing_target")
    with pytest.raises(DataError, match="at least 2 classes"):
        pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1, 1, 1]}).to_csv(tmp_path / "one.csv", index=False)
        load_table(tmp_path / "one.csv", target="y")
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "absent.csv", target="y")
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "t.xlsx").write_bytes(b"x")
        load_table(tmp_path / "t.xlsx", target="y")


def test_ood_file_and_rebuild(csv: Path, ood_csv: Path) -> None:
    ds = load_table(csv, target="outcome", ood_path=ood_csv, seed=7)
    ood = ds.ood["ood-file"]
    assert len(ood.y) == 50 and (ood.y == -1).all()
    assert ds.provenance.rows["ood:ood-file"] == 50 and "ood-file" in ds.provenance.ood_sets
    assert ds.provenance.options["ood_sha256"]

    stored = DataProvenance.model_validate_json(ds.provenance.model_dump_json())
    rebuilt = load_dataset(stored)
    assert rebuilt.train.frame.equals(ds.train.frame) and np.array_equal(rebuilt.val.y, ds.val.y)
    assert rebuilt.ood["ood-file"].frame.equals(ood.frame)

    # Moving the file is fine with an override path; the bytes are what is checked.
    moved = csv.with_name("moved.csv")
    moved.write_bytes(csv.read_bytes())
    assert load_dataset(stored, path_override=str(moved)).test.frame.equals(ds.test.frame)

    # Any change to the data refuses to rebuild.
    csv.write_text(csv.read_text().replace("yes", "no", 1))
    with pytest.raises(DataError, match="data changed since training"):
        load_dataset(stored)


def test_ood_file_with_target(csv: Path, tmp_path: Path) -> None:
    frame = _table(30, seed=2)
    frame.loc[0, "outcome"] = None
    path = tmp_path / "ood.csv"
    frame.to_csv(path, index=False)
    ds = load_table(csv, target="outcome", ood_path=path)
    y = ds.ood["ood-file"].y
    assert y[0] == -1 and set(y[1:]) <= {0, 1}
    expected = (frame["outcome"].iloc[1:] == "yes").astype(int).to_numpy()
    np.testing.assert_array_equal(y[1:], expected)

    frame.drop(columns="site").to_csv(path, index=False)
    with pytest.raises(DataError, match="site: feature missing from the OOD file"):
        load_table(csv, target="outcome", ood_path=path)


def test_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = _table()
    frame["outcome"] = (frame["outcome"] == "yes").astype(int)  # integer labels -> "0", "1"
    path = tmp_path / "cohort.parquet"
    frame.to_parquet(path)
    ds = load_table(path, target="outcome")
    assert ds.labels == ["0", "1"] and ds.provenance.source.startswith("parquet:")
    assert sum(len(s.y) for s in (ds.train, ds.val, ds.test)) == 200
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.train.y, ds.val.y, ds.test.y])), np.sort(frame["outcome"].to_numpy())
    )
    assert load_dataset(ds.provenance).train.frame.equals(ds.train.frame)


def test_stratified_split() -> None:
    y = np.array([0] * 70 + [1] * 30)
    train, val, test = stratified_split(y, (0.6, 0.2, 0.2), seed=5)
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(100))
    assert [(y[i] == 1).sum() for i in (train, val, test)] == [18, 6, 6]
    again = stratified_split(y, (0.6, 0.2, 0.2), seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(stratified_split(y, seed=6)[0], train)
    with pytest.raises(DataError):
        stratified_split(y, (0.5, 0.2, 0.2))


def test_identifiers_and_many_categories_are_refused_by_name(tmp_path: Path) -> None:
    frame = _table(300)
    frame["name"] = [f"person {i}" for i in range(300)]  # text, all distinct
    frame["record"] = np.arange(5000, 5300)  # whole numbers in row order
    frame["town"] = [f"t{i % (MAX_LEVELS + 10)}" for i in range(300)]  # 60 levels
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as refused:
        load_table(path, target="outcome")
    message = str(refused.value)
    assert message.startswith("3 feature columns cannot be learned from: name (300 distinct values in 300 rows")
    assert "record (300 distinct whole numbers in order" in message
    assert f"town (60 categories, more than {MAX_LEVELS})" in message
    assert "--drop name,record,town" in message and "--features" in message
    ds = load_table(path, target="outcome", drop=["name", "record", "town"])
    assert [f.name for f in ds.features] == ["x", "count", "site", "grade"]
    assert load_table(path, target="outcome", features=["x", "site"]).provenance.options["features"] == ["x", "site"]
    with pytest.raises(DataError, match="nope: --drop names no column"):
        load_table(path, target="outcome", drop=["nope"])


def test_column_checks_spare_measurements_and_missing_categories() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "weight": rng.normal(70, 10, 200),  # continuous: all distinct, not an identifier
            "income": rng.permutation(np.arange(10_000, 10_200)) * 7,  # distinct whole numbers, not in order
            "site": rng.choice(["a", "b", None], 200),  # missing is the preprocessing's own level
        }
    )
    check_columns(frame, ["weight", "income", "site"])
    with pytest.raises(DataError, match="weight"):
        check_columns(frame.assign(weight=frame["weight"].round(3).astype(str)), ["weight"])  # as text: an id


def test_the_task_is_inferred_from_the_target_and_can_be_forced() -> None:
    assert infer_task(pd.Series([0.5, 1.0, 2.0])) == "regression"  # a non-whole value
    assert infer_task(pd.Series(np.arange(MAX_CLASSES + 1))) == "regression"  # too many distinct numbers
    assert infer_task(pd.Series(np.arange(MAX_CLASSES) % 3)) == "classification"
    assert infer_task(pd.Series([0, 1, 1, 0])) == "classification"
    assert infer_task(pd.Series([f"c{i}" for i in range(100)])) == "classification"  # text classes: the user's choice
    assert check_target(pd.Series([0.0, 1.0, 0.0]), "y", "regression") == "regression"  # 0/1 forced to regression
    assert check_target(pd.Series([0, 1, 1]), "y") == "classification"
    with pytest.raises(DataError, match="y: the target looks continuous .*some not whole numbers.*too many classes"):
        check_target(pd.Series([0.5, 1.0, 2.0]), "y", "classification")
    with pytest.raises(DataError, match=f"{MAX_CLASSES + 1} distinct numeric values, more than {MAX_CLASSES}"):
        check_target(pd.Series(np.arange(MAX_CLASSES + 1)), "y", "classification")
    with pytest.raises(DataError, match="y: task 'regression' needs a numeric target.*text \\(e.g. 'a'\\)"):
        check_target(pd.Series(["a", "b"]), "y", "regression")
    with pytest.raises(DataError, match="y: 1 infinite target value"):
        check_target(pd.Series([0.5, np.inf, 2.0]), "y")
    with pytest.raises(DataError, match="task must be one of"):
        check_target(pd.Series([0, 1]), "y", "ranking")
    with pytest.raises(DataError, match="at least 2 distinct target values"):
        check_target(pd.Series([1.5, 1.5]), "y")


@pytest.fixture
def risk_csv(tmp_path: Path) -> Path:
    frame = _table(300).assign(outcome=np.linspace(0.0, 1.0, 300))
    frame.loc[[5, 6, 7], "outcome"] = None  # dropped as for classes
    path = tmp_path / "risk.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_continuous_target_trains_a_regression(risk_csv: Path, tmp_path: Path) -> None:
    ds = load_table(risk_csv, target="outcome", seed=4)
    assert ds.labels is None and ds.is_regression
    rows = ds.provenance.rows
    assert (rows["train"], rows["val"], rows["test"]) == (178, 59, 60)  # 297 rows cut 0.6/0.2/0.2 at random
    assert ds.provenance.options["task"] == "regression" and ds.provenance.options["dropped_missing_target"] == 3
    assert "at random" in ds.provenance.population
    for split in (ds.train, ds.val, ds.test):
        assert split.y.dtype == np.float64 and np.isfinite(split.y).all()
    everything = np.sort(np.concatenate([ds.train.y, ds.val.y, ds.test.y]))
    expected = np.delete(np.linspace(0.0, 1.0, 300), [5, 6, 7])
    np.testing.assert_allclose(everything, expected)
    again = load_table(risk_csv, target="outcome", seed=4)
    assert np.array_equal(again.val.y, ds.val.y)
    assert not np.array_equal(load_table(risk_csv, target="outcome", seed=5).val.y, ds.val.y)

    # An OOD file without the target: NaN targets; with it: its values.
    ood = _table(40, seed=3).drop(columns="outcome")
    ood.to_csv(tmp_path / "ood.csv", index=False)
    with_ood = load_table(risk_csv, target="outcome", ood_path=tmp_path / "ood.csv", seed=4)
    assert with_ood.ood["ood-file"].y.dtype == np.float64 and np.isnan(with_ood.ood["ood-file"].y).all()

    rebuilt = load_dataset(DataProvenance.model_validate_json(with_ood.provenance.model_dump_json()))
    assert rebuilt.is_regression and rebuilt.train.frame.equals(ds.train.frame)
    assert np.array_equal(rebuilt.test.y, ds.test.y)


def test_the_task_can_be_forced_on_a_table(risk_csv: Path, csv: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="outcome: the target looks continuous .*too many classes"):
        load_table(risk_csv, target="outcome", task="classification")
    with pytest.raises(DataError, match="outcome: task 'regression' needs a numeric target.*text"):
        load_table(csv, target="outcome", task="regression")
    frame = _table(200).assign(outcome=lambda f: (f["outcome"] == "yes").astype(int))
    frame.to_csv(tmp_path / "binary.csv", index=False)
    assert load_table(tmp_path / "binary.csv", target="outcome").labels == ["0", "1"]
    forced = load_table(tmp_path / "binary.csv", target="outcome", task="regression")
    assert forced.is_regression and set(np.unique(forced.train.y)) <= {0.0, 1.0}
    assert load_dataset(forced.provenance).is_regression
    classes = load_table(csv, target="outcome")
    assert classes.provenance.options["task"] == "classification" and not classes.is_regression


def test_an_infinite_target_is_refused(tmp_path: Path) -> None:
    frame = _table(100).assign(outcome=np.linspace(0.0, 1.0, 100))
    frame.loc[9, "outcome"] = np.inf
    frame.to_csv(tmp_path / "inf.csv", index=False)
    with pytest.raises(DataError, match="outcome: 1 infinite target value"):
        load_table(tmp_path / "inf.csv", target="outcome")


def test_provenance_from_before_regression_rebuilds_a_classification(csv: Path) -> None:
    ds = load_table(csv, target="outcome")
    options = {k: v for k, v in ds.provenance.options.items() if k != "task"}
    old = ds.provenance.model_copy(update={"options": options})
    assert load_dataset(old).labels == ["no", "yes"]


def test_a_category_seen_only_outside_training_is_refused(tmp_path: Path) -> None:
    frame = _table(300)
    frame.loc[[0, 1], "site"] = ["rare-1", "rare-2"]  # one-row levels; seed 1 splits one off training
    frame.to_csv(tmp_path / "rare.csv", index=False)
    with pytest.raises(DataError, match=r"site: categor.* only in the validation or test split.*--drop site"):
        load_table(tmp_path / "rare.csv", target="outcome", seed=1)


def test_listed_caps_long_lists() -> None:
    assert listed(["a", "b"]) == "a, b"
    assert listed([str(i) for i in range(12)]) == "0, 1, 2, 3, 4 and 7 more"


@pytest.mark.parametrize("column", ["site", "count"])
def test_a_gap_outside_the_training_split_is_a_missing_value_not_a_failure(tmp_path: Path, column: str) -> None:
    frame = _table(300)
    frame[column] = frame[column].astype(object)
    y = (frame["outcome"] == "yes").to_numpy().astype(np.int64)
    _, val, _ = stratified_split(y, (0.6, 0.2, 0.2), 0)  # the split load_table makes with seed 0
    frame.loc[val[:3], column] = None  # gaps in three validation rows only
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    ds = load_table(tmp_path / "gaps.csv", target="outcome")
    assert ds.train.frame[column].notna().all() and not ds.val.frame[column].notna().all()
    assert next(f for f in ds.features if f.name == column).missing_allowed
    p = Preprocessing.fit(ds.train.frame, ds.features)
    for split in (ds.val, ds.test):
        assert np.isfinite(p.transform(split.frame)).all()  # the gap is a level (or indicator), not an error
