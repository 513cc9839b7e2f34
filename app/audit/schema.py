"""The audit trail's tables, in SQLAlchemy Core: the ``audit_records`` table and its indexes, and the
``audit_schema_version`` table that :mod:`app.audit.migrations` keeps.

Times are stored in UTC whatever the backend: PostgreSQL gets ``timestamptz``; SQLite has no time type, so
:class:`UTCDateTime` stores naive UTC text (fixed width, so text order is time order) and returns aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware datetime in, an aware UTC datetime out, on every backend; a naive one is refused
    (it would be read as the server's local time on one backend and as UTC on another)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"audit times must be timezone-aware, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


metadata = sa.MetaData()

# The row id is a 64-bit identity on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the rowid alias.
_row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("id", _row_id, primary_key=True, autoincrement=True),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("key_id", sa.String(), nullable=True),
    sa.Column("route", sa.String(), nullable=False),
    sa.Column("surface", sa.String(), nullable=False),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("model_version", sa.String(), nullable=False),
    sa.Column("model_sha256", sa.String(), nullable=False),
    sa.Column("rows", sa.Integer(), nullable=False),
    sa.Column("samples", sa.Integer(), nullable=False),
    sa.Column("seed", sa.BigInteger(), nullable=True),
    sa.Column("sampler", sa.String(), nullable=True),
    sa.Column("accept", sa.Integer(), nullable=False),
    sa.Column("refer", sa.Integer(), nullable=False),
    sa.Column("reject", sa.Integer(), nullable=False),
    sa.Column("reasons", sa.Text(), nullable=False),  # JSON text: component -> rows
    sa.Column("latency_seconds", sa.Float(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
)
# Every query is a time window, often for one model; retention deletes by time.
time_index = sa.Index("ix_audit_records_time", records.c.time)
model_time_index = sa.Index("ix_audit_records_model_time", records.c.model, records.c.time)

schema_version = sa.Table(
    "audit_schema_version",
    metadata,
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)
