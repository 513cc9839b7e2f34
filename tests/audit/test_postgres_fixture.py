"""The PostgreSQL fixture without a server: it skips naming the apt package, and fails under SBNN_CI=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TEST = "test_store.py::test_postgresql_url_means_psycopg"


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("1", "1 error")])
def test_missing_binaries_skip_or_fail_in_ci(tmp_path: Path, ci: str, outcome: str) -> None:
    env = {**os.environ, "SBNN_PG_BIN": str(tmp_path / "no-postgres"), "SBNN_CI": ci}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(HERE / TEST)],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parents[1],
        timeout=120,
    )
    assert outcome in result.stdout, result.stdout
    assert "apt-get install postgresql" in result.stdout
    if ci:
        assert result.returncode != 0 and "SBNN_CI=1 requires them" in result.stdout
