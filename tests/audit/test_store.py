"""The store on both backends (SQLite in tmp_path, a real PostgreSQL): insert, query, filters, retention."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from app.audit.record import AuditRecord
from app.audit.store import AuditStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(audit_url: str) -> AuditStore:
    with AuditStore.open(audit_url) as store:
        yield store


def test_insert_then_query_round_trips(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    records = [record(i) for i in range(10)]
    assert store.insert_many(records) == 10
    assert store.insert_many([]) == 0
    assert store.count() == 10
    assert store.query(T0, T0 + timedelta(days=1)) == records  # every field back, times aware UTC, in order


def test_extreme_values_round_trip(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    r = record(
        0,
        seed=2**63 - 1,
        sampler="sobol",
        key_id="k",
        surface="kserve_v1",
        reasons={"bounds": 1, "support": 2, "density": 3, "epistemic": 4},
        latency_seconds=1e-9,
        time=T0 + timedelta(microseconds=123456),
        status="RESOURCE_EXHAUSTED",
        request_id="é-ünïcode",
    )
    store.insert_many([r])
    assert store.query(T0, T0 + timedelta(seconds=1)) == [r]


def test_window_is_half_open_and_filters_combine(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    records = [record(i) for i in range(12)]  # one a minute; alpha even, beta odd; refer when i % 3
    store.insert_many(reversed(records))
    window = store.query(T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    assert [r.request_id for r in window] == ["req-0002", "req-0003", "req-0004"]
    alpha = store.query(T0, T0 + timedelta(hours=1), model="alpha")
    assert [r.request_id for r in alpha] == [f"req-{i:04d}" for i in range(0, 12, 2)]
    refer = store.query(T0, T0 + timedelta(hours=1), decision="refer")
    assert [r.request_id for r in refer] == [f"req-{i:04d}" for i in range(12) if i % 3]
    both = store.query(T0, T0 + timedelta(hours=1), model="beta", decision="refer", limit=2)
    assert [r.request_id for r in both] == ["req-0001", "req-0005"]
    assert store.query(T0, T0 + timedelta(hours=1), decision="reject") == []
    assert store.query(T0, T0 + timedelta(hours=1), model="gamma") == []


def test_query_takes_any_time_zone(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    from datetime import timezone

    store.insert_many([record(i) for i in range(3)])
    plus2 = timezone(timedelta(hours=2))
    start = (T0 + timedelta(minutes=1)).astimezone(plus2)
    assert [r.request_id for r in store.query(start, start + timedelta(hours=1))] == ["req-0001", "req-0002"]


def test_bad_filters_are_refused(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="decision must be one of"):
        store.query(T0, T0, decision="maybe")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        store.query(T0, T0, limit=0)
    with pytest.raises(ValueError, match="start must be a timezone-aware datetime"):
        store.query(datetime(2026, 1, 1), T0)
    with pytest.raises(ValueError, match="cutoff must be a timezone-aware datetime"):
        store.delete_older_than(datetime(2026, 1, 1))


def test_retention_deletes_older_records_only(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    store.insert_many([record(i) for i in range(10)])
    assert store.delete_older_than(T0 + timedelta(minutes=4)) == 4
    assert store.count() == 6
    assert store.query(T0, T0 + timedelta(hours=1))[0].request_id == "req-0004"
    assert store.delete_older_than(T0) == 0


def test_a_batch_is_all_or_nothing(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    bad = record(1)
    object.__setattr__(bad, "time", datetime(2026, 1, 1))  # past the record's own check: the store's refuses
    with pytest.raises(Exception, match="timezone-aware"):
        store.insert_many([record(0), bad])
    assert store.count() == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:secret@localhost/db", r"must start with one of sqlite, postgresql\+psycopg, got mysql://u:\*\*\*@"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
        ("not a url", "not a database URL"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditStore.open(url)


def test_sqlite_uses_wal(sqlite_url: str) -> None:
    with AuditStore.open(sqlite_url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_postgresql_url_means_psycopg(postgres_url: str) -> None:
    with AuditStore.open(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as store:
        assert store.engine.dialect.driver == "psycopg"
        assert store.count() == 0
