"""The serving install has no audit extra: the record, the writer and the commands import without SQLAlchemy,
and a command that needs it says which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
for blocked in ("sqlalchemy", "psycopg"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
import app.audit, app.audit.record, app.audit.writer, app.audit.export, app.audit.command
from typer.testing import CliRunner
result = CliRunner().invoke(app.audit.command.audit_app, ["prune", "--url", "sqlite:///x.db", "--older-than-days", "1"])
print(result.exit_code, " ".join(result.output.split()))
"""


def test_no_audit_extra_is_needed_to_import_and_the_command_names_it() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 sbnn audit needs the 'audit' extra: pip install 'sbnn[audit]'"
