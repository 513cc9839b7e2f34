"""The audit schema's versions: an ordered list of migrations, applied at open, each once.

A small hand-written scheme rather than Alembic: two tables do not need a migration environment, and the
store must migrate itself when the service starts. ``audit_schema_version`` holds one row per applied
version; :func:`migrate` applies the missing ones in order, each with its version row in one transaction
(PostgreSQL and SQLite both have transactional DDL), under a lock so two processes opening the same database
at once do not both apply it. A database newer than this code is refused rather than guessed at.

To change the schema, append a function: never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from app.audit import schema
from app.errors import SbnnError

# An arbitrary constant key for pg_advisory_xact_lock: "sbnn audit" as an int.
_PG_LOCK_KEY = 0x5B_AD_17


class AuditSchemaError(SbnnError):
    """The database's audit schema is newer than this code, or otherwise cannot be used."""


def _v1_records(conn: sa.Connection) -> None:
    """The records table, without indexes (v2 adds them)."""
    conn.execute(CreateTable(schema.records))


def _v2_indexes(conn: sa.Connection) -> None:
    """Indexes on time and on (model, time)."""
    conn.execute(CreateIndex(schema.time_index))
    conn.execute(CreateIndex(schema.model_time_index))


MIGRATIONS: tuple[Callable[[sa.Connection], None], ...] = (_v1_records, _v2_indexes)
LATEST = len(MIGRATIONS)


def current_version(conn: sa.Connection) -> int:
    """The highest applied version, 0 for a database without the audit tables."""
    if not sa.inspect(conn).has_table(schema.schema_version.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(engine: sa.Engine, target: int = LATEST) -> list[int]:
    """Bring the database to ``target`` (default: the latest); returns the versions applied (empty when it
    was there already). Raises :class:`AuditSchemaError` when the database is newer than ``LATEST``."""
    if not 0 <= target <= LATEST:
        raise ValueError(f"target must be between 0 and {LATEST}, got {target}")
    applied: list[int] = []
    # sqlite_immediate: the store's begin hook takes SQLite's write lock at BEGIN, not at the first write.
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        if not sa.inspect(conn).has_table(schema.schema_version.name):
            conn.execute(CreateTable(schema.schema_version))
        version = current_version(conn)
        if version > LATEST:
            raise AuditSchemaError(
                f"the audit database is at schema version {version}, newer than this sbnn knows ({LATEST}): "
                "upgrade sbnn"
            )
        for number in range(version + 1, target + 1):
            MIGRATIONS[number - 1](conn)
            conn.execute(sa.insert(schema.schema_version).values(version=number, applied_at=datetime.now(UTC)))
            applied.append(number)
    return applied
