"""Fuzzing the real uvicorn server at CI size (issue 14): bench/fuzz.py's generated cases, 0 × 5xx.

The cases and the runner are bench/fuzz.py's (one implementation; `python bench/fuzz.py` runs 10,000 against
`sbnn serve`); here a few hundred go to the session's server, whose limits are the conftest's LIMITS.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CASES = 400
SEED = 14  # the number: a fixed seed, so CI sends the same cases every run


def _fuzz() -> ModuleType:
    """bench/fuzz.py, loaded by path (bench/ is not an installed package); registered in sys.modules, which
    its dataclasses need."""
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _logs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, int]:
    """The session's uvicorn logs and their sizes (live_server's is one of them)."""
    return {log: log.stat().st_size for log in tmp_path_factory.getbasetemp().glob("uvicorn*/stderr.log")}


def test_fuzzed_requests_get_no_5xx_and_the_server_still_answers(
    live_server: str,
    serve_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    flchain_row: dict[str, Any],
) -> None:
    fuzz = _fuzz()
    logs = _logs(tmp_path_factory)
    assert logs, "live_server's log was not found"
    target = fuzz.discover(live_server, serve_settings.max_rows, serve_settings.max_body_bytes)
    assert "flchain-mortality" in target.models and "broken" not in target.models  # only ready models are hit

    report = fuzz.run(live_server, target, CASES, SEED, max_seconds=240.0)

    assert report.sent == CASES
    failed = [(f["surface"], f["status"], f["path"][:80], f["body_prefix"][:160], f["detail"]) for f in report.failures]
    assert failed == [], f"{len(failed)} case(s) answered >= 500 or not at all (reproducers: bench/fuzz.py)"
    assert all(status.isdigit() and int(status) < 500 for status in report.statuses)
    assert len(report.surfaces) >= 10, sorted(report.surfaces)  # every kind of case was sent
    new_text = ""
    for log, size in logs.items():
        with log.open("rb") as stream:
            stream.seek(size)
            new_text += stream.read().decode(errors="replace")
    assert fuzz.tracebacks(new_text) == []

    response = httpx.post(f"{live_server}/v1/models/flchain-mortality/predict", json={"instances": [flchain_row]})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1
