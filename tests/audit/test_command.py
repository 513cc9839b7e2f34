"""``sbnn audit query|export|prune`` through typer's runner, on both backends."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from app.audit.command import DecisionOption, audit_app
from app.audit.record import DECISIONS, AuditRecord
from app.audit.store import AuditStore

WIDE = {"COLUMNS": "300"}  # a wide terminal: no cell is cut


@pytest.fixture
def filled(audit_url: str, record: Callable[..., AuditRecord]) -> str:
    with AuditStore.open(audit_url) as store:
        store.insert_many([record(i) for i in range(6)])
    return audit_url


def invoke(*args: str) -> Result:
    return CliRunner().invoke(audit_app, list(args), env=WIDE)


def test_query_prints_a_table(filled: str) -> None:
    result = invoke("query", "--url", filled, "--since", "2026-01-01T12:00", "--until", "2026-01-01T12:03:00Z")
    assert result.exit_code == 0, result.output
    assert "3 audit records" in result.output
    assert all(f"req-000{i}" in result.output for i in range(3)) and "req-0003" not in result.output


def test_query_filters(filled: str) -> None:
    args = ("query", "--url", filled, "--since", "2026-01-01", "--model", "beta", "--decision", "refer")
    result = invoke(*args, "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "1 audit records" in result.output and "req-0001" in result.output


def test_query_reads_the_url_from_the_environment(filled: str) -> None:
    result = CliRunner().invoke(audit_app, ["query", "--since", "2026-01-01"], env={**WIDE, "SBNN_AUDIT_URL": filled})
    assert result.exit_code == 0, result.output
    assert "6 audit records" in result.output


def test_query_finds_the_servers_sqlite_trail_from_sbnn_audit_dir(
    tmp_path: Path, record: Callable[..., AuditRecord]
) -> None:
    """As inside the Docker image: SBNN_AUDIT_DIR set for the server, `sbnn audit query` without --url."""
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        store.insert_many([record(i) for i in range(2)])
    env = {**WIDE, "SBNN_AUDIT_DIR": str(tmp_path), "SBNN_AUDIT_URL": ""}
    result = CliRunner().invoke(audit_app, ["query", "--since", "2026-01-01"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 audit records" in result.output
    none = CliRunner().invoke(audit_app, ["query", "--since", "2026-01-01"], env={**WIDE, "SBNN_AUDIT_URL": ""})
    assert none.exit_code == 2 and "no audit database" in none.output


def test_export_writes_csv(filled: str, tmp_path: Path) -> None:
    out = tmp_path / "audit.csv"
    result = invoke("export", "--url", filled, "--since", "2026-01-01", "--decision", "refer", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 4 audit records" in result.output
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["request_id"] for r in rows] == ["req-0001", "req-0002", "req-0004", "req-0005"]


def test_prune_deletes_old_records(audit_url: str, record: Callable[..., AuditRecord]) -> None:
    now = datetime.now(UTC)
    with AuditStore.open(audit_url) as store:
        store.insert_many([record(0, time=now - timedelta(days=40)), record(1, time=now - timedelta(days=1))])
    result = invoke("prune", "--url", audit_url, "--older-than-days", "30")
    assert result.exit_code == 0, result.output
    assert "deleted 1 audit records" in result.output and "1 left" in result.output
    with AuditStore.open(audit_url) as store:
        assert [r.request_id for r in store.query(now - timedelta(days=90), now)] == ["req-0001"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("query", "--since", "yesterday"), "not an ISO 8601 time"),
        (("query", "--since", "2026-01-02", "--until", "2026-01-01"), "must be after --since"),
        (("query", "--since", "2026-01-01", "--decision", "maybe"), "'maybe' is not one of"),
        (("query", "--since", "2026-01-01", "--limit", "0"), "--limit"),
        (("prune", "--older-than-days", "0"), "--older-than-days"),
    ],
)
def test_bad_options_are_usage_errors(sqlite_url: str, args: tuple[str, ...], message: str) -> None:
    result = invoke(*args[:1], "--url", sqlite_url, *args[1:])
    assert result.exit_code == 2
    assert message in result.output


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = "postgresql+psycopg://auditor:s3cret@127.0.0.1:1/audit"
    result = invoke("query", "--url", url, "--since", "2026-01-01")
    assert result.exit_code == 2
    assert "error: audit database postgresql+psycopg://auditor:***@127.0.0.1:1/audit" in " ".join(result.output.split())
    assert "s3cret" not in result.output


def test_a_bad_url_is_an_error(tmp_path: Path) -> None:
    result = invoke("prune", "--url", "mysql://localhost/db", "--older-than-days", "3")
    assert result.exit_code == 2
    assert "audit URL must start with one of" in result.output


def test_the_decision_option_has_the_records_decisions() -> None:
    assert tuple(d.value for d in DecisionOption) == DECISIONS
