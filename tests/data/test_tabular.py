from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from app.data.dataset import DataProvenance, load_dataset, stratified_split  # noqa: E402
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.data.tabular import load_table  # noqa: E402
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
