"""Audit records written off the request path: :class:`AuditWriter`, a bounded queue drained by one thread.

``submit`` never waits: it puts the record on a ``queue.Queue`` and returns, so a handler on the event loop
(or a gRPC worker) does not wait on the database. One daemon thread takes records off in batches (one
transaction each). When the queue is full the :class:`Overflow` policy decides: ``fail_closed`` refuses the
record (``submit`` returns False and the caller answers 503: no prediction without its audit record) and
``drop`` loses it, counted in :attr:`AuditWriter.dropped` and passed to ``on_drop`` (a metric, say).

A failing store is logged and counted, never fatal to the thread: the next batch tries again. Log lines name
request ids only, never a record's values nor the database's error text (it may quote the parameters).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from app.audit.record import AuditRecord, parse_enum

logger = logging.getLogger(__name__)

_STOP = object()  # the sentinel that close() queues behind the last record


class Overflow(str, Enum):
    """What ``submit`` does when the queue is full."""

    FAIL_CLOSED = "fail_closed"  # refuse: submit returns False, the request is answered 503
    DROP = "drop"  # lose the record, count it, answer the request


class RecordSink(Protocol):
    """What the writer needs of a store (:class:`~app.audit.store.AuditStore` is one)."""

    def insert_many(self, records: list[AuditRecord]) -> int: ...


class AuditWriter:
    """Write records to ``store`` from a background thread, ``batch_size`` per transaction at most.

    Args:
        store: where the records go.
        queue_size: records that may wait; beyond that, ``overflow`` applies.
        overflow: :class:`Overflow` (or its value).
        on_drop: called with each dropped record under ``drop`` (on the caller's thread: keep it cheap).
        batch_size: records per transaction at most.
        linger_s: how long the thread waits for more records once one has come, before writing the batch.

    Attributes:
        written: records the store accepted.
        dropped: records lost to a full queue (``drop``) or submitted after close.
        refused: records refused by a full queue (``fail_closed``) or submitted after close.
        failed: records lost to store errors; ``errors``: the failed batches.
    """

    def __init__(
        self,
        store: RecordSink,
        queue_size: int = 10_000,
        overflow: Overflow | str = Overflow.FAIL_CLOSED,
        on_drop: Callable[[AuditRecord], None] | None = None,
        batch_size: int = 256,
        linger_s: float = 0.1,
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.store = store
        self.overflow = parse_enum(Overflow, overflow, "overflow")
        self.on_drop = on_drop
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.written = self.dropped = self.refused = self.failed = self.errors = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # counters: submit runs on many threads (gRPC workers)
        self._closed = False
        self._stop_queued = False
        self._thread = threading.Thread(target=self._drain, name="sbnn-audit-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records waiting in the queue (approximate, as ``Queue.qsize``)."""
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        """Whether a record submitted now would meet the overflow policy (approximate, as ``Queue.full``)."""
        return self._queue.full()

    @property
    def alive(self) -> bool:
        """Whether the draining thread runs (False once closed)."""
        return self._thread.is_alive()

    def submit(self, record: AuditRecord) -> bool:
        """Queue ``record`` without waiting. Returns whether the request may be answered: True when queued,
        or dropped under ``drop``; False only under ``fail_closed``, when the queue is full or closed."""
        # Under the lock, so that no record is queued behind close()'s sentinel (it would never be written).
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait(record)
                    return True
                except queue.Full:
                    pass
        if self.overflow is Overflow.FAIL_CLOSED:
            with self._lock:
                self.refused += 1
            return False
        with self._lock:
            self.dropped += 1
        if self.on_drop is not None:
            try:
                self.on_drop(record)
            except Exception:  # a broken callback must not fail the request it reports on
                logger.exception("audit: on_drop failed (request_id %s)", record.request_id)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop taking records, write what is queued and stop the thread. Returns True when everything queued
        was written (or failed) within ``timeout`` seconds; False when the thread is still draining."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closed = True
            queue_stop, self._stop_queued = not self._stop_queued, True
        if queue_stop:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                with self._lock:
                    self._stop_queued = False  # a later close() tries again
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._thread.join(left)
        return not self._thread.is_alive()

    def _drain(self) -> None:
        stopping = False
        while not stopping:
            batch: list[AuditRecord] = []
            item = self._queue.get()
            # Up to linger_s for more: one transaction per batch, not per record (a one-record insert costs
            # about 0.3 ms of this thread, much of it holding the GIL the request path needs: measured).
            deadline = time.monotonic() + self.linger_s
            while True:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= self.batch_size:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)

    def _write(self, batch: list[AuditRecord]) -> None:
        try:
            self.store.insert_many(batch)
        except Exception as exc:  # the thread outlives any one database error
            with self._lock:
                self.failed += len(batch)
                self.errors += 1
            logger.error(
                "audit: %d records not written (%s; request_id %s .. %s)",
                len(batch),
                type(exc).__name__,
                batch[0].request_id,
                batch[-1].request_id,
            )
        else:
            with self._lock:
                self.written += len(batch)
