"""The ``sbnn audit`` commands: query the trail as a table, export it as CSV, prune it (retention).

``audit_app`` is a typer sub-app that :mod:`app.cli` mounts as ``sbnn audit``. The store is imported inside
each command: the audit extra (SQLAlchemy, psycopg) is optional, and ``sbnn --help`` stays instant. The URL
comes from ``--url``, else as the server finds it (``SBNN_AUDIT_URL``, else ``SBNN_AUDIT_DIR``); its password never
appears in output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.cli_options import console, fail, guard

if TYPE_CHECKING:
    from app.audit.record import AuditRecord
    from app.audit.store import AuditStore

audit_app = typer.Typer(
    name="audit",
    help="The PHI-free audit trail of prediction requests: query, export, prune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


class DecisionOption(str, Enum):
    ACCEPT = "accept"
    REFER = "refer"
    REJECT = "reject"


Url = Annotated[
    str | None,
    typer.Option(
        help="Audit database: sqlite:///path/audit.db or postgresql+psycopg://user@host/db [default: the "
        "server's, from SBNN_AUDIT_URL or SBNN_AUDIT_DIR]."
    ),
]
Since = Annotated[str, typer.Option(help="Start of the window, ISO 8601 (UTC when no offset), included.")]
Until = Annotated[str | None, typer.Option(help="End of the window, ISO 8601, excluded [default: now].")]
Model = Annotated[str | None, typer.Option(help="Only this model.")]
DecisionFilter = Annotated[
    DecisionOption | None, typer.Option(help="Only requests with at least one row of this decision.")
]
Limit = Annotated[int | None, typer.Option(min=1, help="At most this many records, oldest first.")]

# The table's columns: the CSV has every field, a terminal the ones an operator reads.
_TABLE_COLUMNS = (
    "time",
    "request_id",
    "model",
    "model_version",
    "surface",
    "status",
    "rows",
    "accept",
    "refer",
    "reject",
    "reasons",
    "latency_seconds",
)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC (the trail's time zone)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint=option) from None
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value


def _window(since: str, until: str | None) -> tuple[datetime, datetime]:
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until is not None else datetime.now(UTC)
    if end <= start:
        raise typer.BadParameter(f"must be after --since ({start.isoformat()})", param_hint="--until")
    return start, end


def _database(url: str | None) -> str:
    """``--url``, else the server's own rule (``Settings.audit_database``: SBNN_AUDIT_URL, else SQLite under
    SBNN_AUDIT_DIR), so that inside a container `sbnn audit query` reads the trail its server writes."""
    if url:
        return url
    from app.serve.settings import Settings

    database = Settings().audit_database
    if database is None:
        fail(ValueError("no audit database: pass --url, or set SBNN_AUDIT_URL or SBNN_AUDIT_DIR as the server has"))
    return database  # type: ignore[return-value]


@contextmanager
def _store(given: str | None) -> Iterator[AuditStore]:
    """The opened store; a database error becomes ``error: …`` (exit 2) naming the URL without its password."""
    from app.audit.store import AuditStore, DatabaseError, safe_url

    url = _database(given)
    try:
        with AuditStore.open(url) as store:
            yield store
    except DatabaseError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        fail(ValueError(f"audit database {safe_url(url)}: {reason}"))


def _query(
    url: str | None,
    since: str,
    until: str | None,
    model: str | None,
    decision: DecisionOption | None,
    limit: int | None,
) -> list[AuditRecord]:
    start, end = _window(since, until)
    with _store(url) as store:
        return store.query(start, end, model=model, decision=decision.value if decision else None, limit=limit)


@audit_app.command()
def query(
    since: Since,
    until: Until = None,
    model: Model = None,
    decision: DecisionFilter = None,
    limit: Limit = None,
    url: Url = None,
) -> None:
    """Print the audit records of a time window as a table."""
    with guard("audit", "audit"):
        from app.audit.export import HEADER, record_cells

        records = _query(url, since, until, model, decision, limit)
        table = Table(*_TABLE_COLUMNS, title=f"{len(records)} audit records")
        keep = [HEADER.index(name) for name in _TABLE_COLUMNS]
        for record in records:
            cells = record_cells(record)
            table.add_row(*(escape(cells[i]) for i in keep))
        console.print(table)


@audit_app.command()
def export(
    since: Since,
    out: Annotated[Path, typer.Option(help="CSV file to write (header row, every field).")],
    until: Until = None,
    model: Model = None,
    decision: DecisionFilter = None,
    limit: Limit = None,
    url: Url = None,
) -> None:
    """Write the audit records of a time window to a CSV file."""
    with guard("audit", "audit"):
        from app.audit.export import write_csv

        count = write_csv(_query(url, since, until, model, decision, limit), out)
        console.print(f"wrote {count} audit records to {escape(str(out))}")


@audit_app.command()
def prune(
    older_than_days: Annotated[int, typer.Option(min=1, help="Delete records older than this many days.")],
    url: Url = None,
) -> None:
    """Retention: delete the audit records older than N days."""
    with guard("audit", "audit"):
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        with _store(url) as store:
            deleted = store.delete_older_than(cutoff)
            left = store.count()
        console.print(f"deleted {deleted} audit records older than {cutoff.isoformat()}; {left} left")
