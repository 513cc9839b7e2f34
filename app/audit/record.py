"""What the audit trail keeps of one prediction request: who asked, which model answered, how many rows were
accepted, referred or rejected and why (counts), how long it took and how it ended.

There is no field for a feature value, a prediction or a row index, and none of the fields is free text from
the request body: reasons are counted per gate component, whose names are checked. The trail can therefore be
kept, exported and shown to operators without becoming a store of patient data (tests/audit/test_record.py
pins the field set, so a new field is a reviewed decision).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum
from typing import TypeVar

from app.gate.spec import Component

# The values of app.gate.gate.Decision, repeated so that reading the trail does not import numpy and the gate;
# tests/audit/test_record.py checks that they agree.
DECISIONS = ("accept", "refer", "reject")
COMPONENTS = tuple(c.value for c in Component)

E = TypeVar("E", bound=Enum)


class Surface(str, Enum):
    """The API surface a request came through."""

    V1 = "v1"
    V2 = "v2"
    GRPC = "grpc"
    KSERVE_V1 = "kserve_v1"


def parse_enum(kind: type[E], value: object, what: str) -> E:
    """``kind(value)``, or a ValueError naming the value and the valid set (house style for options)."""
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{what} must be one of {valid}, got {value!r}") from None


def parse_decision(value: str) -> str:
    """A decision name, checked against :data:`DECISIONS`."""
    if value not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(map(repr, DECISIONS))}, got {value!r}")
    return value


# The columns' ranges (32-bit counts, a 64-bit seed): a value outside would fail its whole batch in the database.
MAX_COUNT = 2**31 - 1
SEED_RANGE = (-(2**63), 2**63 - 1)


def _count(name: str, value: object) -> int:
    # bool is an int: a True count is a bug at the call site, not one row.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be an int in [0, {MAX_COUNT}], got {value!r}")
    return value


def _text(name: str, value: object, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str{' or None' if optional else ''}, got {value!r}")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise ValueError(f"{name} must not contain NUL characters")


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One prediction request, without patient data.

    Attributes:
        time: when the request arrived, timezone-aware (stored and returned in UTC).
        request_id: the request's id (the ``X-Request-ID`` the service answers with).
        key_id: which API key asked (its id, never the key), or None without authentication.
        route: the route template or gRPC method, e.g. ``/v1/models/{name}/predict`` (not the filled-in path).
        surface: the API surface (:class:`Surface`).
        model, model_version, model_sha256: the checkpoint that answered.
        rows: rows in the request.
        samples: Monte Carlo samples drawn.
        seed: the request's seed, or None when it gave none.
        sampler: the sampler's name, or None for the default.
        accept, refer, reject: rows with each decision (they sum to at most ``rows``: a failed request has 0).
        reasons: gate component -> rows it flagged (a row flagged by two components counts for both).
        latency_seconds: time from arrival to answer.
        status: the HTTP status code (``"200"``) or gRPC code name (``"OK"``).
    """

    time: datetime
    request_id: str
    key_id: str | None
    route: str
    surface: Surface
    model: str
    model_version: str
    model_sha256: str
    rows: int
    samples: int
    seed: int | None
    sampler: str | None
    accept: int = 0
    refer: int = 0
    reject: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)
    latency_seconds: float
    status: str

    def __post_init__(self) -> None:
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise ValueError(f"time must be a timezone-aware datetime, got {self.time!r}")
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        object.__setattr__(self, "surface", parse_enum(Surface, self.surface, "surface"))
        for name in ("request_id", "route", "model", "model_version", "model_sha256", "status"):
            _text(name, getattr(self, name))
        for name in ("key_id", "sampler"):
            _text(name, getattr(self, name), optional=True)
        for name in ("rows", "samples", *DECISIONS):
            _count(name, getattr(self, name))
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]
        ):
            raise ValueError(f"seed must be a 64-bit int or None, got {seed!r}")
        if self.accept + self.refer + self.reject > self.rows:
            raise ValueError(f"accept + refer + reject exceed rows ({self.rows})")
        unknown = sorted(set(self.reasons) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"reasons must be gate components ({', '.join(COMPONENTS)}), got {unknown}")
        # A copy in component order: the caller's dict can change later, the record cannot.
        reasons = {c: _count(f"reasons[{c}]", self.reasons[c]) for c in COMPONENTS if c in self.reasons}
        object.__setattr__(self, "reasons", reasons)
        latency = self.latency_seconds
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency >= 0:
            raise ValueError(f"latency_seconds must be a non-negative number, got {latency!r}")
        object.__setattr__(self, "latency_seconds", float(latency))

    def decision_count(self, decision: str) -> int:
        """Rows with ``decision`` (one of :data:`DECISIONS`)."""
        return int(getattr(self, parse_decision(decision)))

    def reasons_json(self) -> str:
        """The reasons as compact JSON text, keys in component order (how the store and the CSV keep them)."""
        return json.dumps(dict(self.reasons), separators=(",", ":"))


FIELDS = tuple(f.name for f in fields(AuditRecord))


def reasons_from_json(text: str | None) -> dict[str, int]:
    """The inverse of :meth:`AuditRecord.reasons_json` (empty for NULL)."""
    return {} if not text else {str(k): int(v) for k, v in json.loads(text).items()}
