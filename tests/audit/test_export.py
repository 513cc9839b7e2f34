"""The CSV export: a header of the record's fields, one row per record, formulas defused."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from app.audit.export import HEADER, record_cells, write_csv
from app.audit.record import FIELDS, AuditRecord, reasons_from_json


def test_csv_has_a_header_and_one_row_per_record(tmp_path: Path, record: Callable[..., AuditRecord]) -> None:
    records = [record(i) for i in range(5)]
    out = tmp_path / "audit.csv"
    assert write_csv(records, out) == 5
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == HEADER == FIELDS
    assert len(rows) == 6
    first = dict(zip(rows[0], rows[2], strict=True))
    assert first["time"] == "2026-01-01T12:01:00+00:00"
    assert first["key_id"] == "key-1" and dict(zip(rows[0], rows[1], strict=True))["key_id"] == ""
    assert first["surface"] == "v1" and first["refer"] == "1"
    assert reasons_from_json(first["reasons"]) == {"density": 1}
    assert float(first["latency_seconds"]) == records[1].latency_seconds


def test_spreadsheet_formulas_are_defused(record: Callable[..., AuditRecord]) -> None:
    cells = dict(zip(HEADER, record_cells(record(0, request_id="=HYPERLINK(1)", key_id="@x")), strict=True))
    assert cells["request_id"] == "'=HYPERLINK(1)" and cells["key_id"] == "'@x"
    assert cells["rows"] == "3"  # numbers as they are


def test_an_empty_export_is_a_header(tmp_path: Path) -> None:
    assert write_csv([], tmp_path / "empty.csv") == 0
    assert (tmp_path / "empty.csv").read_text(encoding="utf-8").strip() == ",".join(HEADER)
