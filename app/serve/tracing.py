"""Optional OpenTelemetry spans of a prediction: ``sbnn.infer`` and, inside it, ``sbnn.validate`` (decoding,
the checkpoint's preprocessing or tokenizer, the gate's screen), ``sbnn.queue`` (waiting for the compute
thread), ``sbnn.compute`` (the Monte Carlo pass) and ``sbnn.gate`` (density, epistemic, the decisions).

Off by default (``SBNN_TRACING``): then no OpenTelemetry call is made at all. On, the spans go to the process's
tracer provider, the one ``opentelemetry-instrument`` or the deployer's own code sets up with its exporter
(without one, OpenTelemetry's API drops them); sbnn configures no exporter itself. Span attributes hold counts
and names only (model, version, rows, samples, sampler, decisions), never a request's values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

AttributeValue = str | int | float | bool


class Tracing:
    """Spans through OpenTelemetry's API when ``enabled``; otherwise nothing (``provider``: a tracer provider
    instead of the global one, for tests)."""

    def __init__(self, enabled: bool, provider: Any | None = None) -> None:
        self.enabled = enabled
        self._tracer: Any | None = None
        if enabled:
            from opentelemetry import trace  # fastapi depends on the API: present wherever sbnn serves

            self._tracer = trace.get_tracer("sbnn", tracer_provider=provider)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: AttributeValue) -> Iterator[Any | None]:
        """A span around the block, a child of the current one (None when off)."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def record(self, name: str, start_ns: int, end_ns: int, **attributes: AttributeValue) -> None:
        """A finished span of a stage timed elsewhere (the compute thread's queue and pass), as a child of the
        current span; ``*_ns``: ``time.time_ns()`` readings."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(name, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)


def now_ns() -> int:
    """Wall-clock nanoseconds, OpenTelemetry's timestamps."""
    return time.time_ns()
