"""The audit trail's hook in the server: one PHI-free record per prediction request (app/audit).

The request's surface (an ASGI middleware for REST, the gRPC servicer's wrapper) opens an ``AuditNote`` in a
context variable; the data plane, the one place that knows what answered, fills it in (``note``); once the
answer is sent the surface adds the request id, key id, route template, status and latency and hands the
record to the background writer. A request that fails before a model answered is recorded too, with what is
known (rows and samples 0). Under ``fail_closed`` a full queue turns requests away with 503 and Retry-After
before they run, so no prediction is ever made unrecorded.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.serve.middleware import error_response

if TYPE_CHECKING:
    from app.audit.writer import AuditWriter
    from app.serve.dataplane import InferenceResult

log = logging.getLogger("sbnn.serve.audit")
RETRY_AFTER_S = 1
# Prediction routes by the surface the audit trail names (route templates, as Starlette matched them).
SURFACES = {
    re.compile(r"/v1/models/\{name\}/predict"): "v1",
    re.compile(r"/v1/models/\{name\}:predict"): "kserve_v1",
    re.compile(r"/v2/models/\{name\}(/versions/\{version\})?/infer"): "v2",
}
PREDICTION_PATH = re.compile(r"/v1/models/[^/]+(/predict|:predict)|/v2/models/[^/]+(/versions/[^/]+)?/infer")


@dataclass
class AuditNote:
    """What the data plane knows of a request's answer (nothing of its values)."""

    model: str = ""
    model_version: str = ""
    model_sha256: str = ""
    rows: int = 0
    samples: int = 0
    seed: int | None = None
    sampler: str | None = None
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


_current: ContextVar[AuditNote | None] = ContextVar("sbnn_audit_note", default=None)


def note(result: InferenceResult) -> None:
    """Called by the data plane once per answered request: fill the open note, if a surface opened one."""
    current = _current.get()
    if current is None:
        return
    m, scores = result.manifest, result.scores
    current.model, current.model_version, current.model_sha256 = m.name, m.version, m.weights.sha256
    current.rows, current.samples = result.rows, result.samples
    current.seed = None if scores is None else scores.plan.seed
    current.sampler = None if scores is None else scores.plan.sampler.value
    current.decisions = Counter(d.value for d in result.gate.decisions)
    current.reasons = Counter(c for reasons in result.gate.reasons for c in {r.split(":", 1)[0] for r in reasons})


class AuditCollector:
    """The audit writer's counters at scrape time (nothing while no trail is open): records written, dropped
    (``drop``, or after close), refused (``fail_closed``: the queue filled while the request ran), failed (a
    database error), the queue's length, and the requests turned away before running."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def collect(self) -> Iterator[Metric]:
        writer = self.trail.writer
        if writer is None:
            return
        for name, value, what in (
            ("written", writer.written, "written to the database"),
            ("dropped", writer.dropped, "lost to a full queue under the drop policy, or submitted after close"),
            ("refused", writer.refused, "refused by a queue that filled while their request ran (fail_closed)"),
            ("failed", writer.failed, "not written because the database failed"),
        ):
            yield CounterMetricFamily(f"sbnn_audit_records_{name}", f"Audit records {what}.", value=value)
        yield GaugeMetricFamily("sbnn_audit_queue_records", "Audit records waiting to be written.", writer.pending)
        what = "Prediction requests answered 503 (gRPC UNAVAILABLE) before running: the audit queue was full."
        yield CounterMetricFamily("sbnn_audit_requests_turned_away", what, value=self.trail.turned_away)


class AuditTrail:
    """The writer (set in the lifespan; None: no trail) and the record building both surfaces share.
    ``known(name)`` says whether a name is a served model's: only then is a path's name recorded."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self.writer: AuditWriter | None = None
        self.known = known
        self.turned_away = 0  # requests answered 503 / UNAVAILABLE before running: the queue was full

    def behind(self) -> bool:
        """Whether a prediction request must be turned away before it runs (``fail_closed`` and a full queue);
        each one is counted."""
        from app.audit.writer import Overflow

        writer = self.writer
        if writer is None or writer.overflow is not Overflow.FAIL_CLOSED or not writer.full:
            return False
        self.turned_away += 1  # on the event loop only: no lock needed
        return True

    def open(self) -> tuple[AuditNote, object]:
        current = AuditNote()
        return current, _current.set(current)

    def close(self, token: object) -> None:
        _current.reset(token)  # type: ignore[arg-type]

    def record(
        self,
        current: AuditNote,
        *,
        arrived: datetime,
        seconds: float,
        request_id: str,
        key_id: str | None,
        route: str,
        surface: str,
        model: str,
        status: str,
    ) -> None:
        from app.audit.record import AuditRecord

        try:
            record = AuditRecord(
                time=arrived,
                request_id=request_id,
                key_id=key_id,
                route=route,
                surface=surface,
                model=current.model or (model if self.known(model) else ""),
                model_version=current.model_version,
                model_sha256=current.model_sha256,
                rows=current.rows,
                samples=current.samples,
                seed=current.seed,
                sampler=current.sampler,
                accept=current.decisions["accept"],
                refer=current.decisions["refer"],
                reject=current.decisions["reject"],
                reasons=dict(current.reasons),
                latency_seconds=seconds,
                status=status,
            )
        except ValueError as exc:  # a bug in what the server passes: never fail the answer already sent
            log.error("audit record not built for request %s: %s", request_id, exc)
            return
        if self.writer is not None and not self.writer.submit(record):
            log.error("audit record refused (queue full or closed) for request %s", request_id)


class AuditMiddleware:
    """Records each REST prediction request; under ``fail_closed`` a full queue is a 503 before it runs."""

    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = self.trail.writer
        prediction = scope["type"] == "http" and scope["method"] == "POST" and PREDICTION_PATH.fullmatch(scope["path"])
        if writer is None or not prediction:
            await self.app(scope, receive, send)
            return
        if self.trail.behind():
            retry = [(b"retry-after", str(RETRY_AFTER_S).encode())]
            await error_response(scope, send, 503, "the audit trail is behind: retry shortly", retry)
            return
        arrived, started, status = datetime.now(UTC), time.perf_counter(), 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        current, token = self.trail.open()
        try:
            await self.app(scope, receive, capture)
        finally:
            self.trail.close(token)
            route = getattr(scope.get("route"), "path", "")
            surface = next((s for pattern, s in SURFACES.items() if pattern.fullmatch(route)), None)
            surface = surface or ("v2" if scope["path"].startswith("/v2") else "v1")
            state = scope.get("state", {})
            self.trail.record(
                current,
                arrived=arrived,
                seconds=time.perf_counter() - started,
                request_id=state.get("request_id", ""),
                key_id=state.get("key_id"),
                route=route or "unmatched",
                surface=surface,
                model=scope.get("path_params", {}).get("name", ""),
                status=str(status),
            )
