from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from app.data.dataset import DataProvenance  # noqa: E402
from app.data.preprocess import Preprocessing  # noqa: E402
from app.data.schema import FeatureKind  # noqa: E402
from app.data.sequence import pad_steps  # noqa: E402
from app.data.sequence_table import MAX_LENGTH_CAP, load_sequence_dataset, load_sequence_table  # noqa: E402
from app.errors import DataError  # noqa: E402


def _visits(patients: int = 60, seed: int = 0, most: int = 8, continuous: bool = False) -> pd.DataFrame:
    """patients × 1..most visits: a lab value, a ward, the day of the visit, an outcome (recorded at each)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        days = np.sort(rng.choice(np.arange(0, 400), size=int(rng.integers(1, most + 1)), replace=False))
        for step, day in enumerate(days):
            lab = float(rng.normal(5.0, 1.0))
            outcome = round(lab * 1.7 + step, 3) if continuous else int((p + step) % 2)
            rows.append({"patient": f"p{p:03d}", "day": int(day), "lab": lab, "ward": f"w{p % 3}", "outcome": outcome})
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # the file's rows in no order


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def visits(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    frame = _visits()
    return frame, _write(frame, tmp_path / "visits.csv")


def _load(path: Path, **kwargs: object):
    return load_sequence_table(path, target="outcome", sequence_id="patient", time="day", **kwargs)


def _splits(ds):
    return {"train": ds.train, "val": ds.val, "test": ds.test}


def test_sequences_are_split_whole_in_time_order_with_the_last_steps_target(visits) -> None:
    frame, path = visits
    ds = _load(path, seed=2)
    assert ds.name == "visits" and ds.labels == ["0", "1"] and not ds.is_regression and ds.time == "day"
    assert [f.name for f in ds.features] == ["day", "lab", "ward"]  # every column but target and id
    kinds = {f.name: f.kind for f in ds.features}
    assert kinds == {"day": FeatureKind.NUMERIC, "lab": FeatureKind.NUMERIC, "ward": FeatureKind.CATEGORICAL}
    ids = [set(s.ids) for s in _splits(ds).values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(frame["patient"]) and sum(len(s) for s in ids) == 60
    assert ds.provenance.rows == {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    assert ds.provenance.source == f"csv-sequences:{path.resolve()}"
    for split in _splits(ds).values():
        assert split.y.dtype == np.int64
        for i, (start, n, pid) in enumerate(zip(split.starts, split.lengths, split.ids, strict=True)):
            steps = split.frame.iloc[start : start + n]
            mine = frame[frame["patient"] == pid].sort_values("day")
            assert n == len(mine) and np.array_equal(steps["day"].to_numpy(), mine["day"].to_numpy())
            assert (np.diff(steps["day"].to_numpy()) > 0).all()  # in time order despite the shuffled file
            np.testing.assert_allclose(steps["lab"].to_numpy(), mine["lab"].to_numpy())
            assert split.y[i] == int(mine["outcome"].iloc[-1])  # the target is the last visit's
    p = Preprocessing.fit(ds.train.frame, ds.features)
    x, kept = pad_steps(p.transform(ds.val.frame), ds.val.lengths, ds.max_length)
    assert x.shape == (len(ds.val), ds.max_length, p.n_outputs) and (kept >= 1).all()


def test_task_inference_and_override(tmp_path: Path, visits) -> None:
    _, path = visits
    continuous = _write(_visits(continuous=True), tmp_path / "scores.csv")
    ds = _load(continuous)
    assert ds.is_regression and ds.labels is None and ds.provenance.options["task"] == "regression"
    assert all(s.y.dtype == np.float64 for s in _splits(ds).values())
    assert sum(len(s) for s in _splits(ds).values()) == 60
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 12, 12)  # random split by the fractions
    forced = _load(path, task="regression")
    assert forced.is_regression and set(np.unique(forced.train.y)) <= {0.0, 1.0}
    with pytest.raises(DataError, match="outcome: the target looks continuous .*too many classes"):
        _load(continuous, task="classification")
    text = _visits()
    text["outcome"] = np.where(text["outcome"] == 1, "sick", "well")
    with pytest.raises(DataError, match="outcome: task 'regression' needs a numeric target"):
        _load(_write(text, tmp_path / "text.csv"), task="regression")
    assert _load(tmp_path / "text.csv").labels == ["sick", "well"]


def test_a_repeated_step_is_refused_with_the_sequence_named(tmp_path: Path) -> None:
    frame = _visits()
    twin = frame[frame["patient"] == "p007"].iloc[[0]]
    frame = pd.concat([frame, twin.assign(lab=0.0)], ignore_index=True)
    with pytest.raises(DataError, match="patient 'p007' has two steps at day = "):
        _load(_write(frame, tmp_path / "twice.csv"))


def test_max_length_default_and_cap(tmp_path: Path, visits) -> None:
    _, path = visits
    ds = _load(path)
    assert ds.max_length == int(ds.train.lengths.max()) <= 8
    assert ds.provenance.options["max_length"] == ds.max_length and ds.provenance.options["sequences_cut"] == 0
    short = _load(path, max_length=3)
    every = np.concatenate([s.lengths for s in _splits(short).values()])
    assert short.max_length == 3 and short.provenance.options["sequences_cut"] == int((every > 3).sum()) > 0
    assert np.array_equal(short.train.lengths, ds.train.lengths)  # the frames keep every step; padding cuts

    long = _visits(patients=30, most=100)
    capped = _load(_write(long, tmp_path / "long.csv"), drop=["day"])
    assert capped.max_length == MAX_LENGTH_CAP and capped.provenance.options["sequences_cut"] > 0
    assert [f.name for f in capped.features] == ["lab", "ward"]  # the time column dropped: order only


def test_rebuilding_from_the_provenance_gives_the_same_splits(tmp_path: Path, visits) -> None:
    _, path = visits
    ood = _visits(patients=10, seed=5).drop(columns="outcome")
    ood["lab"] = ood["lab"] + 3.0
    ood_path = _write(ood, tmp_path / "other.csv")
    ds = _load(path, seed=3, ood_path=ood_path, max_length=5)
    assert len(ds.ood["ood-file"]) == 10 and (ds.ood["ood-file"].y == -1).all()
    assert ds.provenance.rows["ood:ood-file"] == 10 and ds.provenance.options["ood_sha256"]
    stored = DataProvenance.model_validate_json(ds.provenance.model_dump_json())
    rebuilt = load_sequence_dataset(stored)
    assert rebuilt.provenance == ds.provenance and rebuilt.max_length == 5
    for name, split in _splits(ds).items():
        again = _splits(rebuilt)[name]
        assert again.frame.equals(split.frame) and np.array_equal(again.lengths, split.lengths)
        assert np.array_equal(again.y, split.y) and np.array_equal(again.ids, split.ids)
    assert rebuilt.ood["ood-file"].frame.equals(ds.ood["ood-file"].frame)

    moved = _write(pd.read_csv(path), tmp_path / "moved.csv")
    assert load_sequence_dataset(stored, path_override=str(moved)).test.frame.equals(ds.test.frame)

    ood_path.write_text(ood_path.read_text().replace("p000", "p999", 1))
    with pytest.raises(DataError, match="OOD data changed since training"):
        load_sequence_dataset(stored)
    path.write_text(path.read_text().replace("w1", "w2", 1))
    with pytest.raises(DataError, match="data changed since training"):
        load_sequence_dataset(stored)


def test_regression_rebuild_and_ood_targets(tmp_path: Path) -> None:
    path = _write(_visits(continuous=True), tmp_path / "scores.csv")
    ood = _visits(patients=8, seed=9, continuous=True)
    ds = _load(path, ood_path=_write(ood, tmp_path / "ood.csv"))
    last = ood.sort_values(["patient", "day"]).groupby("patient")["outcome"].last()
    np.testing.assert_allclose(ds.ood["ood-file"].y, last.to_numpy())
    rebuilt = load_sequence_dataset(ds.provenance)
    assert rebuilt.is_regression and np.array_equal(rebuilt.val.y, ds.val.y)


def test_a_sequence_without_a_final_target_is_dropped_and_dates_are_days(tmp_path: Path) -> None:
    frame = _visits()
    frame["outcome"] = frame["outcome"].astype(float)
    last = frame.sort_values("day").groupby("patient").tail(1)
    frame.loc[last.index[:4], "outcome"] = np.nan  # 4 patients' last visits have no outcome
    frame["day"] = (pd.Timestamp("2020-01-01") + pd.to_timedelta(frame["day"], unit="D")).dt.strftime("%Y-%m-%d")
    ds = _load(_write(frame, tmp_path / "dated.csv"))
    assert ds.provenance.options["dropped_missing_target"] == 4
    assert sum(len(s) for s in _splits(ds).values()) == 56
    assert [f.name for f in ds.features] == ["lab", "ward"]  # a date column orders the steps, not a feature
    dated = _load(tmp_path / "dated.csv", features=["day", "lab"])
    days = dated.train.frame["day"].to_numpy()
    epoch_day = (pd.Timestamp("2020-01-01") - pd.Timestamp("1970-01-01")).days
    assert days.dtype == np.float64 and days.min() >= epoch_day
    starts, lengths = dated.train.starts, dated.train.lengths
    assert all((np.diff(days[s : s + n]) > 0).all() for s, n in zip(starts, lengths, strict=True))


def test_column_errors(tmp_path: Path, visits) -> None:
    frame, path = visits
    with pytest.raises(DataError, match="patient: the sequence id cannot also be a feature"):
        _load(path, features=["lab", "patient"])
    with pytest.raises(DataError, match="outcome: the target cannot also be a feature"):
        _load(path, features=["lab", "outcome"])
    with pytest.raises(DataError, match="visit: time column not in"):
        load_sequence_table(path, target="outcome", sequence_id="patient", time="visit")
    named = frame.assign(note=[f"note {i}" for i in range(len(frame))])
    with pytest.raises(DataError, match=r"note \(\d+ distinct values in \d+ rows: an identifier\?\)"):
        _load(_write(named, tmp_path / "named.csv"))
    assert [f.name for f in _load(tmp_path / "named.csv", drop=["note"]).features] == ["day", "lab", "ward"]
    with pytest.raises(DataError, match="day: .*must hold numbers or dates"):
        _load(_write(frame.assign(day="soon"), tmp_path / "soon.csv"))


def test_parquet_sequences(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "visits.parquet"
    _visits().to_parquet(path)
    ds = _load(path)
    assert ds.provenance.source.startswith("parquet-sequences:")
    assert load_sequence_dataset(ds.provenance).train.frame.equals(ds.train.frame)
