"""The writer: batches off the caller's thread, flushes on close, both overflow policies, survives store errors.

The store is a real SQLite store; :class:`Gated` wraps it to hold the writer's thread inside a write, which is
how a slow database fills the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from app.audit.record import AuditRecord
from app.audit.store import AuditStore
from app.audit.writer import AuditWriter, Overflow

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Gated:
    """A store whose writes wait for ``release`` (set by default: no wait); records each batch's size."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.fail_next = 0

    def insert_many(self, records: list[AuditRecord]) -> int:
        self.entered.set()
        assert self.release.wait(10), "test gate never released"
        self.batches.append(len(records))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("database unavailable: INSERT ... ('secret-value')")
        return self.store.insert_many(records)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[AuditStore]:
    with AuditStore.open(sqlite_url) as store:
        yield store


@pytest.fixture
def gated(store: AuditStore) -> Gated:
    return Gated(store)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_records_arriving_within_the_linger_share_one_transaction(
    gated: Gated, record: Callable[..., AuditRecord]
) -> None:
    """One request at a time still makes few transactions: the thread waits ``linger_s`` for more."""
    writer = AuditWriter(gated, queue_size=100, linger_s=0.5)
    for i in range(5):
        assert writer.submit(record(i))
        time.sleep(0.02)  # requests 20 ms apart, well within the linger
    assert writer.close(timeout=10)
    assert gated.batches == [5] and writer.written == 5


def test_records_are_written_in_batches_and_flushed_on_close(
    gated: Gated, store: AuditStore, record: Callable[..., AuditRecord]
) -> None:
    gated.release.clear()  # hold the thread in its first write while 1000 records queue up
    writer = AuditWriter(gated, queue_size=2000, batch_size=256)
    assert writer.submit(record(0))
    assert gated.entered.wait(5)
    records = [record(i) for i in range(1, 1001)]
    assert all(writer.submit(r) for r in records)
    assert writer.pending == 1000
    gated.release.set()
    assert writer.close(timeout=10)
    assert not writer.alive
    assert gated.batches == [1, 256, 256, 256, 232]  # the queue drained 256 per transaction
    assert writer.written == store.count() == 1001
    assert (writer.dropped, writer.refused, writer.failed, writer.errors) == (0, 0, 0, 0)
    assert store.query(T0, T0 + DAY) == [record(0), *records]


def test_submit_does_not_wait_for_the_store(gated: Gated, record: Callable[..., AuditRecord]) -> None:
    gated.release.clear()
    writer = AuditWriter(gated, queue_size=100)
    started = time.perf_counter()
    assert all(writer.submit(record(i)) for i in range(50))
    assert time.perf_counter() - started < 0.5  # the store is blocked: submit only queued
    gated.release.set()
    assert writer.close(timeout=10)
    assert writer.written == 50


def test_fail_closed_refuses_when_full(gated: Gated, store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    gated.release.clear()
    writer = AuditWriter(gated, queue_size=2, overflow="fail_closed")
    assert writer.overflow is Overflow.FAIL_CLOSED
    assert writer.submit(record(0))
    assert gated.entered.wait(5)  # record 0 is in the thread's hands; two more fill the queue
    assert writer.submit(record(1)) and writer.submit(record(2))
    assert not writer.submit(record(3))  # the caller answers 503
    assert (writer.refused, writer.dropped) == (1, 0)
    gated.release.set()
    assert writer.close(timeout=10)
    assert not writer.submit(record(4))  # closed: refused too
    assert writer.refused == 2
    assert [r.request_id for r in store.query(T0, T0 + DAY)] == ["req-0000", "req-0001", "req-0002"]


def test_drop_loses_and_counts_when_full(gated: Gated, store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    seen: list[str] = []
    gated.release.clear()
    writer = AuditWriter(gated, queue_size=2, overflow=Overflow.DROP, on_drop=lambda r: seen.append(r.request_id))
    assert writer.submit(record(0))
    assert gated.entered.wait(5)
    assert writer.submit(record(1)) and writer.submit(record(2))
    assert writer.submit(record(3)) and writer.submit(record(4))  # answered, not recorded
    assert writer.dropped == 2 and seen == ["req-0003", "req-0004"]
    gated.release.set()
    assert writer.close(timeout=10)
    assert writer.submit(record(5))  # after close: dropped, counted
    assert writer.dropped == 3 and seen[-1] == "req-0005" and writer.refused == 0
    assert store.count() == 3


def test_a_failing_on_drop_does_not_fail_submit(gated: Gated, record: Callable[..., AuditRecord]) -> None:
    def broken(_: AuditRecord) -> None:
        raise RuntimeError("metrics down")

    writer = AuditWriter(gated, queue_size=1, overflow="drop", on_drop=broken)
    writer.close(timeout=10)
    assert writer.submit(record(0))
    assert writer.dropped == 1


def test_a_failing_store_is_logged_and_counted_and_the_thread_goes_on(
    gated: Gated, store: AuditStore, record: Callable[..., AuditRecord], caplog: pytest.LogCaptureFixture
) -> None:
    gated.fail_next = 1
    writer = AuditWriter(gated, queue_size=10)
    with caplog.at_level(logging.ERROR, logger="app.audit.writer"):
        assert writer.submit(record(0, model="secret-model"))
        _wait(lambda: writer.errors == 1)
        assert writer.alive
        assert writer.submit(record(1))
        assert writer.close(timeout=10)
    assert (writer.failed, writer.errors, writer.written) == (1, 1, 1)
    assert [r.request_id for r in store.query(T0, T0 + DAY)] == ["req-0001"]
    [line] = [r.getMessage() for r in caplog.records]
    assert "req-0000" in line and "RuntimeError" in line
    assert "secret" not in line  # neither the record's values nor the error's text


def test_a_real_store_error_keeps_the_thread(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    writer = AuditWriter(store, queue_size=10)
    bad = record(0)
    object.__setattr__(bad, "time", datetime(2026, 1, 1))  # refused by the database layer
    assert writer.submit(bad)
    _wait(lambda: writer.errors == 1)
    assert writer.submit(record(1))
    assert writer.close(timeout=10)
    assert writer.written == store.count() == 1


def test_close_is_idempotent_and_times_out(gated: Gated, record: Callable[..., AuditRecord]) -> None:
    gated.release.clear()
    writer = AuditWriter(gated, queue_size=1)
    assert writer.submit(record(0))
    assert gated.entered.wait(5)
    assert writer.submit(record(1))  # the queue is full: close cannot queue its sentinel yet
    assert not writer.close(timeout=0.05)
    gated.release.set()
    assert writer.close(timeout=10)
    assert writer.close(timeout=1)
    assert writer.written == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overflow": "block"}, "overflow must be one of 'fail_closed', 'drop', got 'block'"),
        ({"queue_size": 0}, "queue_size must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_options_are_refused(gated: Gated, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditWriter(gated, **kwargs)  # type: ignore[arg-type]


def test_many_threads_submit_safely(store: AuditStore, record: Callable[..., AuditRecord]) -> None:
    writer = AuditWriter(store, queue_size=100_000, batch_size=64)

    def submit(offset: int) -> None:
        for i in range(250):
            assert writer.submit(record(offset + i))

    threads = [threading.Thread(target=submit, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close(timeout=30)
    assert writer.written == store.count() == 2000
