"""OpenTelemetry spans of a prediction (SBNN_TRACING): on, one ``sbnn.infer`` span per request with its stages
as children, timed in order, holding counts and names only; off, nothing reaches the tracer provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from app.serve.settings import Settings  # noqa: E402
from app.serve.tracing import Tracing  # noqa: E402

ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
STAGES = ["sbnn.validate", "sbnn.queue", "sbnn.compute", "sbnn.gate"]


def _serve(
    model_repository: Path, tracing: bool, bodies: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[int]]:
    """Spans exported while an in-process app (tracing on or off, its own tracer provider) answers ``bodies``."""
    from conftest import in_process

    from app.serve import app as app_module

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = app_module.Tracing
    monkeypatch.setattr(app_module, "Tracing", lambda enabled: original(enabled, provider=provider))
    # ready once one model serves: the repository's "broken" model never does
    settings = Settings(models=model_repository, device="cpu", tracing=tracing, grpc_port=0, ready_when="any")

    async def ask() -> list[int]:
        async with in_process(settings) as client:
            return [
                (await client.post("/v1/models/flchain-mortality/predict", json=body)).status_code for body in bodies
            ]

    statuses = asyncio.run(ask())
    return list(exporter.get_finished_spans()), statuses


def test_a_prediction_is_one_span_with_its_stages_in_order(
    model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [{"instances": [ROW, {**ROW, "age": 95}, {**ROW, "age": 10000}], "seed": 3}]
    spans, statuses = _serve(model_repository, True, bodies, monkeypatch)
    assert statuses == [200]
    (infer,) = [s for s in spans if s.name == "sbnn.infer"]
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == infer.context.span_id),
                      key=lambda s: s.start_time)  # fmt: skip
    assert [s.name for s in children] == STAGES
    for earlier, later in zip(children, children[1:], strict=False):
        assert earlier.end_time <= later.start_time + 1_000_000  # in order (1 ms of clock reading slack)
    assert all(infer.start_time <= s.start_time and s.end_time <= infer.end_time for s in children)
    attributes = dict(infer.attributes)
    assert attributes["model"] == "flchain-mortality" and attributes["sbnn.rows"] == 3
    assert attributes["sbnn.sampler"] in ("local", "fresh") and attributes["sbnn.samples"] > 0
    assert (attributes["sbnn.decisions.accept"], attributes["sbnn.decisions.refer"]) == (1, 1)
    assert attributes["sbnn.decisions.reject"] == 1
    compute = next(s for s in children if s.name == "sbnn.compute")
    assert compute.attributes["rows"] == 2  # the rejected row is not computed
    # Counts and names only: no value of the request in any attribute.
    values = {str(v) for s in spans for v in dict(s.attributes).values()}
    assert not values & {"62", "95", "10000", "1.2", "1.5"}


def test_a_refused_request_ends_its_span_with_the_error(
    model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans, statuses = _serve(model_repository, True, [{"instances": [{**ROW, "age": "old"}]}], monkeypatch)
    assert statuses == [422]
    (infer,) = [s for s in spans if s.name == "sbnn.infer"]
    assert not infer.status.is_ok and [s.name for s in spans if s.name.startswith("sbnn.")] == [
        "sbnn.validate",
        "sbnn.infer",
    ]


def test_tracing_off_makes_no_spans(model_repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spans, statuses = _serve(model_repository, False, [{"instances": [ROW]}], monkeypatch)
    assert statuses == [200] and spans == []
    assert Tracing(enabled=False)._tracer is None  # nothing of OpenTelemetry is touched
