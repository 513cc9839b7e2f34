from __future__ import annotations

import gzip
from importlib.resources import files

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from app.data import pm25  # noqa: E402
from app.data.pm25 import OOD_REASONS, PM25_FEATURES, SHA256, SOURCE, load_pm25  # noqa: E402
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.data.sequence import SequenceDataset, SequenceSplit, pad_steps  # noqa: E402
from app.errors import DataError  # noqa: E402

OOD_NAMES = {"later-period", "winter", "unit-error:TEMP"}


@pytest.fixture(scope="module")
def ds() -> SequenceDataset:
    return load_pm25(seed=0)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """The bundled CSV indexed by its hour, as ids name them."""
    with (files("app.data") / "bundled" / "beijing_pm25.csv.gz").open("rb") as f:
        table = pd.read_csv(f, compression="gzip")
    hours = pd.to_datetime(table[["year", "month", "day", "hour"]])
    return table.set_index(pd.Index(hours.dt.strftime("%Y-%m-%dT%H:%M"), name="id"))


def _splits(ds: SequenceDataset) -> dict[str, SequenceSplit]:
    return {"train": ds.train, "val": ds.val, "test": ds.test, **ds.ood}


def _hours(split: SequenceSplit) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(pd.Series(split.ids), format="%Y-%m-%dT%H:%M"))


def test_dataset_shape(ds: SequenceDataset) -> None:
    assert ds.name == "beijing_pm25" and ds.target == "pm2.5" and ds.is_regression and ds.labels is None
    assert ds.max_length == 24 and ds.time is None and ds.target_unit == "log(1 + µg/m³)"
    assert set(ds.ood) == OOD_NAMES == set(OOD_REASONS) == set(ds.provenance.ood_sets)
    for name, split in _splits(ds).items():
        assert len(split) > 1000, name
        assert (np.asarray(split.lengths) == 24).all() and split.lengths.dtype == np.int64
        assert len(split.frame) == 24 * len(split)
        assert list(split.frame.columns) == list(PM25_FEATURES)
        assert split.y.dtype == np.float64 and np.isfinite(split.y).all()
        assert len(set(split.ids.tolist())) == len(split)  # one window per target hour


def test_provenance(ds: SequenceDataset) -> None:
    prov = ds.provenance
    assert prov.source == SOURCE == "bundled:beijing_pm25" and prov.sha256 == SHA256 and prov.target == "pm2.5"
    assert prov.split_seed == 0
    assert prov.rows == {name: len(s) for name, s in [("train", ds.train), ("val", ds.val), ("test", ds.test)]} | {
        f"ood:{name}": len(s) for name, s in ds.ood.items()
    }
    fractions = prov.split_fractions
    assert len(fractions) == 3 and all(f > 0 for f in fractions) and abs(sum(fractions) - 1) < 1e-9
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert fractions[0] == pytest.approx(len(ds.train) / total)
    assert prov.options["window"] == 24 and prov.options["stride_hours"] == 2
    assert prov.options["file"] == "beijing_pm25.csv.gz"
    assert prov.model_dump_json()  # options are JSON (stored in the checkpoint manifest)


def test_targets_match_source(ds: SequenceDataset, raw: pd.DataFrame) -> None:
    for split in _splits(ds).values():
        source = raw.loc[split.ids, "pm2.5"].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(split.y, np.log1p(source))
    # A few by hand: the first hours of the file are missing, so the first window starts on 2 January 2010.
    assert raw.loc["2010-01-02T00:00", "pm2.5"] == 129
    assert ds.ood["winter"].ids[0] == "2010-01-02T00:00"
    assert ds.ood["winter"].y[0] == pytest.approx(np.log1p(129))
    for split in (ds.train, ds.test):
        for i in (0, len(split) // 2, len(split) - 1):
            assert split.y[i] == pytest.approx(np.log1p(float(raw.loc[split.ids[i], "pm2.5"])))


def test_window_is_the_24_hours_before_the_target(ds: SequenceDataset, raw: pd.DataFrame) -> None:
    position = {hour: row for row, hour in enumerate(raw.index)}
    for split in (ds.train, ds.val, ds.ood["winter"]):
        hours = _hours(split)
        last = split.frame.iloc[np.asarray(split.starts) + 23]
        # The last step is hour t-1 (hour_sin/cos encode it), never the target hour itself.
        expected = 2 * np.pi * ((hours.hour.to_numpy() - 1) % 24) / 24
        np.testing.assert_allclose(last["hour_sin"].to_numpy(), np.sin(expected), atol=1e-12)
        np.testing.assert_allclose(last["hour_cos"].to_numpy(), np.cos(expected), atol=1e-12)
        for i in (0, 1, len(split) // 3, len(split) - 1):
            t = position[split.ids[i]]
            window = split.frame.iloc[24 * i : 24 * (i + 1)]
            source = raw.iloc[t - 24 : t]
            for column in ("DEWP", "TEMP", "PRES", "Iws", "Is", "Ir", "cbwd"):
                assert window[column].tolist() == source[column].tolist(), (split.ids[i], column)
            np.testing.assert_allclose(window["pm25_log"].to_numpy(), np.log1p(source["pm2.5"].to_numpy(float)))
    # Stride: target hours are even hours of the day.
    assert (_hours(ds.train).hour.to_numpy() % 2 == 0).all()


def test_splits_follow_the_time_rules(ds: SequenceDataset) -> None:
    season = [3, 4, 5, 6, 7, 8, 9, 10, 11]
    hours = {name: _hours(split) for name, split in _splits(ds).items()}
    train, val, test = hours["train"], hours["val"], hours["test"]
    assert set(train.year) == {2010, 2011, 2012} and set(train.month) == set(season)
    for h in (val, test):
        assert set(h.year) == {2013} and set(h.month) <= set(season)
    assert (val.isocalendar().week.to_numpy() % 2 == 0).all()
    assert (test.isocalendar().week.to_numpy() % 2 == 1).all()
    assert set(hours["later-period"].year) == {2014} and set(hours["later-period"].month) <= set(season)
    assert set(hours["winter"].month) == {12, 1, 2}
    assert set(hours["winter"].year) == {2010, 2011, 2012, 2013, 2014}
    # Disjoint by target hour; together the five sets are every kept window of the file.
    kept = ["train", "val", "test", "later-period", "winter"]
    ids = [set(_splits(ds)[name].ids.tolist()) for name in kept]
    assert sum(len(s) for s in ids) == len(set().union(*ids))
    assert sum(len(s) for s in ids) + ds.provenance.options["dropped_missing_target"] == (43824 - 24) // 2


def test_unit_error_temp(ds: SequenceDataset) -> None:
    shifted, test = ds.ood["unit-error:TEMP"], ds.test
    np.testing.assert_allclose(shifted.frame["TEMP"].to_numpy(), test.frame["TEMP"].to_numpy() * 9 / 5 + 32)
    others = [c for c in PM25_FEATURES if c != "TEMP"]
    pd.testing.assert_frame_equal(shifted.frame[others], test.frame[others])
    np.testing.assert_array_equal(shifted.y, test.y)
    np.testing.assert_array_equal(shifted.ids, test.ids)
    np.testing.assert_array_equal(shifted.lengths, test.lengths)


def test_specs_from_train_only(ds: SequenceDataset) -> None:
    spec = {f.name: f for f in ds.features}
    assert list(spec) == list(PM25_FEATURES)
    for name in PM25_FEATURES:
        if name == "cbwd":
            continue
        observed = ds.train.frame[name].dropna()
        assert spec[name].minimum == observed.min() and spec[name].maximum == observed.max(), name
        assert spec[name].plausible is not None and spec[name].description
    # Winter is colder than anything in training: the support comes from the train split, not the file.
    assert ds.ood["winter"].frame["TEMP"].min() < spec["TEMP"].minimum
    assert spec["cbwd"].kind is FeatureKind.CATEGORICAL and spec["cbwd"].categories == ["NE", "NW", "SE", "cv"]
    assert spec["pm25_log"].missing_allowed and not spec["TEMP"].missing_allowed
    assert spec["TEMP"].unit == "°C" and spec["PRES"].unit == "hPa" and spec["Iws"].unit == "m/s"
    assert spec["TEMP"].plausible.low == -60 and spec["TEMP"].plausible.high == 60
    assert spec["hour_sin"].plausible.low == -1 and spec["hour_cos"].plausible.high == 1


def test_sha_check(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pm25._raw_bytes()
    assert pm25._check_sha(data) == SHA256
    with pytest.raises(DataError, match="sha256"):
        pm25._check_sha(data.replace(b"NW", b"NE", 1))
    monkeypatch.setattr(pm25, "_raw_bytes", lambda: data[:-10])
    with pytest.raises(DataError, match="changed"):
        load_pm25()


def test_gap_in_the_file_is_refused() -> None:
    table = pd.read_csv(gzip.GzipFile(fileobj=(files("app.data") / "bundled" / "beijing_pm25.csv.gz").open("rb")))
    assert len(pm25._hours(table)) == 43824
    with pytest.raises(DataError, match="contiguous"):
        pm25._hours(table.drop(index=100).reset_index(drop=True))


def test_pad_steps(ds: SequenceDataset) -> None:
    prep = Preprocessing.fit(ds.train.frame, ds.features)
    d = prep.n_outputs
    assert d == 14  # 9 numbers, pm25_log's missing indicator, 4 wind directions
    for split in (ds.val, ds.ood["unit-error:TEMP"]):
        steps = prep.transform({name: split.frame[name] for name in PM25_FEATURES})
        x, lengths = pad_steps(steps, split.lengths, ds.max_length)
        assert x.shape == (len(split), 24, d) and x.dtype == np.float32
        assert (lengths == 24).all()
        np.testing.assert_array_equal(x[-1], steps[-24:])


def test_seed_only_recorded(ds: SequenceDataset) -> None:
    other = load_pm25(seed=7)
    assert other.provenance.split_seed == 7
    np.testing.assert_array_equal(other.test.ids, ds.test.ids)
    assert other.provenance.sha256 == ds.provenance.sha256


def test_a_checkpoints_provenance_rebuilds_it(ds: SequenceDataset) -> None:
    from app.data.dataset import DataProvenance, load_dataset
    from app.data.sequence_table import load_sequence_dataset
    from app.errors import DataError

    stored = DataProvenance.model_validate_json(ds.provenance.model_dump_json())
    rebuilt = load_sequence_dataset(stored)
    np.testing.assert_array_equal(rebuilt.test.y, ds.test.y)
    assert list(rebuilt.ood) == list(ds.ood)
    with pytest.raises(DataError, match="data changed since training"):
        load_sequence_dataset(stored.model_copy(update={"sha256": "0" * 64}))
    with pytest.raises(DataError, match="load_sequence_dataset"):
        load_dataset(stored)
