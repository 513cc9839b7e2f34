"""Where audit records live: :class:`AuditStore`, SQLAlchemy Core over SQLite (one file, WAL) or PostgreSQL.

Open it with :meth:`AuditStore.open`, which creates or migrates the schema (:mod:`app.audit.migrations`).
The store is thread-safe in the way SQLAlchemy engines are: each call checks a connection out of the pool.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from app.audit.record import AuditRecord, parse_decision, reasons_from_json
from app.errors import MissingExtra

try:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.engine import URL, make_url
except ImportError as err:  # pragma: no cover - the serving install has no audit extra
    raise MissingExtra("sqlalchemy", "audit", "the audit trail") from err

from app.audit import schema
from app.audit.migrations import current_version, migrate

BACKENDS = ("sqlite", "postgresql+psycopg")
# What a database failure raises (connection, SQL, driver): callers need not import SQLAlchemy to catch it.
DatabaseError = sa.exc.SQLAlchemyError
_COLUMNS = [c.name for c in schema.records.columns if c.name != "id"]


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden: for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _parse_url(url: str) -> URL:
    """A SQLite file or PostgreSQL through psycopg; ``postgresql://`` means psycopg (not psycopg2)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError("not a database URL: expected sqlite:///path/audit.db or postgresql+psycopg://...") from None
    if parsed.drivername in ("postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            # An in-memory database is one per connection: the writer's thread would write to another one.
            raise ValueError(f"a SQLite audit URL needs a file path (sqlite:///path/audit.db), got {safe_url(url)}")
        return parsed
    raise ValueError(f"audit URL must start with one of {', '.join(BACKENDS)}, got {safe_url(url)}")


def _wal(cursor: Any, timeout_s: float = 10.0) -> None:
    """WAL mode (kept in the file once set). Switching needs a lock that another process's first open may hold,
    and SQLite answers "database is locked" at once there, without its busy handler (CI saw it with four opens
    at once): so only when the file is not WAL yet, retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_hooks(engine: sa.Engine) -> None:
    """WAL (readers do not block the writer) and real transactions: pysqlite's own transaction handling
    skips BEGIN before DDL, so SQLAlchemy's documented recipe takes it over."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        _wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str, *, echo: bool = False) -> sa.Engine:
    """An engine for an audit URL, schema untouched: SQLite in WAL mode with real transactions (its folder
    created), or PostgreSQL through psycopg with connections checked before use."""
    parsed = _parse_url(url)
    if parsed.drivername.startswith("sqlite"):
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, echo=echo)
        _sqlite_hooks(engine)
        return engine
    return sa.create_engine(parsed, echo=echo, pool_pre_ping=True)


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _row(record: AuditRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _COLUMNS}
    values["surface"] = record.surface.value
    values["reasons"] = record.reasons_json()
    return values


def _record(row: sa.Row[Any]) -> AuditRecord:
    values = dict(row._mapping)
    values.pop("id", None)
    values["reasons"] = reasons_from_json(values["reasons"])
    return AuditRecord(**values)


class AuditStore:
    """The audit records of one database. Times are aware datetimes; windows are half-open ``[start, end)``."""

    def __init__(self, engine: sa.Engine) -> None:
        """Wrap an engine whose schema is already migrated; :meth:`open` is the usual way in."""
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, echo: bool = False) -> AuditStore:
        """Connect to ``sqlite:///path/audit.db`` or ``postgresql+psycopg://user@host/db``, then create or
        migrate the schema. A SQLite file's folder is created."""
        engine = create_engine(url, echo=echo)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return safe_url(self.engine.url)

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return current_version(conn)

    def insert_many(self, records: Iterable[AuditRecord]) -> int:
        """Insert ``records`` in one transaction (all or none); returns how many."""
        rows = [_row(r) for r in records]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(schema.records), rows)
        return len(rows)

    def query(
        self,
        start: datetime,
        end: datetime,
        model: str | None = None,
        decision: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Records with ``start <= time < end``, oldest first; ``model`` keeps one model, ``decision``
        (accept, refer, reject) the requests with at least one row of that decision, ``limit`` the first N."""
        table = schema.records
        start, end = _aware(start, "start"), _aware(end, "end")
        statement = sa.select(table).where(table.c.time >= start, table.c.time < end)
        if model is not None:
            statement = statement.where(table.c.model == model)
        if decision is not None:
            statement = statement.where(table.c[parse_decision(decision)] > 0)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit must be a positive int, got {limit!r}")
            statement = statement.limit(limit)
        statement = statement.order_by(table.c.time, table.c.id)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(statement)]

    def delete_older_than(self, cutoff: datetime) -> int:
        """Retention: delete the records with ``time < cutoff``; returns how many."""
        cutoff = _aware(cutoff, "cutoff")
        with self.engine.begin() as conn:
            return int(conn.execute(sa.delete(schema.records).where(schema.records.c.time < cutoff)).rowcount)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(schema.records)).scalar_one())

    def close(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
