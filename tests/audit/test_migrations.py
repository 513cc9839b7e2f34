"""The schema's versions on both backends: applied in order at open, once, and a newer database refused."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.audit import schema
from app.audit.migrations import LATEST, AuditSchemaError, current_version, migrate
from app.audit.record import AuditRecord
from app.audit.store import AuditStore, create_engine


def _indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes(schema.records.name)}


def test_open_creates_the_latest_schema_once(audit_url: str, record: Callable[..., AuditRecord]) -> None:
    with AuditStore.open(audit_url) as store:
        assert store.schema_version() == LATEST == 2
        assert _indexes(store.engine) == {"ix_audit_records_time", "ix_audit_records_model_time"}
        store.insert_many([record(0)])
        assert migrate(store.engine) == []  # idempotent
    with AuditStore.open(audit_url) as store:  # and again at the next open: nothing applied, nothing lost
        assert store.schema_version() == LATEST
        assert store.count() == 1
        with store.engine.connect() as conn:
            versions = conn.execute(sa.select(schema.schema_version.c.version)).scalars().all()
        assert versions == [1, 2]


def test_migrations_apply_in_order_from_an_older_version(audit_url: str, record: Callable[..., AuditRecord]) -> None:
    engine = create_engine(audit_url)
    try:
        assert migrate(engine, target=1) == [1]
        assert _indexes(engine) == set()
        with engine.connect() as conn:
            assert current_version(conn) == 1
        assert migrate(engine, target=1) == []
    finally:
        engine.dispose()
    with AuditStore.open(audit_url) as opened:  # open migrates v1 -> v2
        assert opened.schema_version() == 2
        assert _indexes(opened.engine) == {"ix_audit_records_time", "ix_audit_records_model_time"}
        opened.insert_many([record(0)])
        assert opened.count() == 1


def test_a_newer_database_is_refused(audit_url: str) -> None:
    AuditStore.open(audit_url).close()
    engine = create_engine(audit_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.schema_version).values(version=LATEST + 1, applied_at=datetime.now(UTC)))
    finally:
        engine.dispose()
    with pytest.raises(AuditSchemaError, match=f"schema version {LATEST + 1}, newer than this sbnn knows"):
        AuditStore.open(audit_url)


def test_bad_target_is_refused(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url.replace("audit/audit.db", "other.db"))
    try:
        with pytest.raises(ValueError, match="target must be between 0 and 2"):
            migrate(engine, target=3)
    finally:
        engine.dispose()


def test_concurrent_opens_migrate_once(audit_url: str) -> None:
    """Two processes starting at once (threads here): the migration lock lets one apply, the other see it."""
    from concurrent.futures import ThreadPoolExecutor

    def open_and_count(_: int) -> int:
        with AuditStore.open(audit_url) as store:
            return store.schema_version()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_count, range(4))) == [LATEST] * 4
    engine = create_engine(audit_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema.schema_version.c.version)).scalars().all() == [1, 2]
    finally:
        engine.dispose()
