"""Audit records as text: one row of strings per record, shared by the CSV export and the CLI's table.

The CSV has a header row of the record's field names; times are ISO 8601 in UTC, reasons JSON text, a missing
value an empty cell. A text cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab,
carriage return first) is quoted with a leading apostrophe: request and key ids can come from clients.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from app.audit.record import FIELDS, AuditRecord

HEADER = FIELDS
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def record_cells(record: AuditRecord) -> list[str]:
    """``record`` as strings, in :data:`HEADER` order."""
    cells: list[str] = []
    for name in HEADER:
        value = getattr(record, name)
        if name == "time":
            cells.append(value.isoformat())
        elif name == "reasons":
            cells.append(record.reasons_json())
        elif name == "surface":
            cells.append(value.value)
        elif value is None:
            cells.append("")
        elif isinstance(value, str):
            cells.append(_text(value))
        else:
            cells.append(repr(value) if isinstance(value, float) else str(value))
    return cells


def write_csv(records: Iterable[AuditRecord], out: Path) -> int:
    """Write ``records`` to ``out`` (UTF-8, header row first); returns how many rows."""
    count = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for record in records:
            writer.writerow(record_cells(record))
            count += 1
    return count
