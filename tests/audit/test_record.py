"""The audit record: its field set is pinned (no room for patient data) and its values are checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.audit.record import COMPONENTS, DECISIONS, FIELDS, AuditRecord, Surface, reasons_from_json
from app.gate.gate import Decision
from app.gate.spec import Component

# The documented field set (app/audit/record.py). Adding a field is a privacy review: none may carry a feature
# value, a prediction, a row or free text from the request body.
DOCUMENTED = (
    "time",
    "request_id",
    "key_id",
    "route",
    "surface",
    "model",
    "model_version",
    "model_sha256",
    "rows",
    "samples",
    "seed",
    "sampler",
    "accept",
    "refer",
    "reject",
    "reasons",
    "latency_seconds",
    "status",
)


def test_field_set_is_the_documented_one() -> None:
    assert FIELDS == DOCUMENTED
    assert not any(word in name for name in FIELDS for word in ("feature", "value", "input", "instance", "predict"))


def test_fields_are_scalars_or_counts() -> None:
    hints = {f.name: str(f.type) for f in dataclasses.fields(AuditRecord)}
    assert hints["reasons"] == "Mapping[str, int]"
    assert set(hints.values()) <= {
        "datetime",
        "str",
        "str | None",
        "int",
        "int | None",
        "float",
        "Surface",
        "Mapping[str, int]",
    }


def test_decisions_and_components_agree_with_the_gate() -> None:
    assert DECISIONS == tuple(d.value for d in Decision)
    assert COMPONENTS == tuple(c.value for c in Component)


def test_record_is_frozen_and_normalised(record: Callable[..., AuditRecord]) -> None:
    local = datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    reasons = {"epistemic": 1, "bounds": 2}
    r = record(time=local, surface="grpc", reasons=reasons, accept=0, refer=1, reject=2, latency_seconds=1)
    assert r.time == datetime(2026, 1, 1, 12, 0, tzinfo=UTC) and r.time.tzinfo is UTC
    assert r.surface is Surface.GRPC
    assert list(r.reasons) == ["bounds", "epistemic"]  # component order
    reasons["bounds"] = 99
    assert r.reasons["bounds"] == 2  # a copy
    assert isinstance(r.latency_seconds, float)
    assert reasons_from_json(r.reasons_json()) == {"bounds": 2, "epistemic": 1}
    assert r.decision_count("reject") == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rows = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"surface": "v3"}, "surface must be one of 'v1', 'v2', 'grpc', 'kserve_v1', got 'v3'"),
        ({"reasons": {"age": 1}}, "reasons must be gate components"),
        ({"reasons": {"density": -1}}, "reasons[density] must be an int in [0, 2147483647]"),
        ({"rows": -1}, "rows must be an int in [0, 2147483647], got -1"),
        ({"samples": 2**31}, "samples must be an int in"),
        ({"refer": True}, "refer must be an int in"),
        ({"accept": 3, "refer": 3}, "exceed rows"),
        ({"seed": "1"}, "seed must be a 64-bit int or None"),
        ({"seed": 2**63}, "seed must be a 64-bit int or None"),
        ({"request_id": "a\x00b"}, "request_id must not contain NUL"),
        ({"key_id": 7}, "key_id must be a str or None"),
        ({"status": 200}, "status must be a str"),
        ({"latency_seconds": float("nan")}, "latency_seconds must be a non-negative number"),
    ],
)
def test_bad_values_are_refused(changes: dict[str, object], message: str, record: Callable[..., AuditRecord]) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        record(**changes)


def test_decision_name_is_checked(record: Callable[..., AuditRecord]) -> None:
    with pytest.raises(ValueError, match="decision must be one of 'accept', 'refer', 'reject', got 'maybe'"):
        record().decision_count("maybe")
