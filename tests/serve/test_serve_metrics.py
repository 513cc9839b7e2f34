"""/metrics on the in-process app: Prometheus text, request latency by route, prediction counters, model gauges."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.serve.app import create_app
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

PREDICT_ROUTE = "/v1/models/{name}/predict"
MODEL = "flchain-mortality"
BUNDLED = Path(__file__).resolve().parents[2] / "models" / MODEL
BUNDLED_SHA256 = json.loads((BUNDLED / "manifest.json").read_text())["weights"]["sha256"]


async def _scrape(client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]) -> Any:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


async def test_metrics_is_prometheus_text(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "sbnn_request_duration_seconds",
        "sbnn_inference_stage_duration_seconds",
        "sbnn_batch_rows",
        "sbnn_batch_requests",
        "sbnn_predictions",
        "sbnn_decisions",
        "sbnn_model_info",
        "sbnn_model_ready",
        "sbnn_gate_reasons",
        "sbnn_drift_psi",
        "sbnn_drift_ks",
        "sbnn_drift_ood_rate",
    } <= families


async def test_the_process_metrics_are_exported(
    asgi_client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]
) -> None:
    """The server's own resident memory, CPU time and open files (prometheus-client's ProcessCollector)."""
    import time

    metrics = await _scrape(asgi_client, parse_metrics)
    assert 50e6 < metrics.value("process_resident_memory_bytes") < 8e9  # a server with torch loaded, in bytes
    assert metrics.value("process_cpu_seconds_total") > 0 and metrics.value("process_open_fds") >= 3
    assert metrics.value("process_start_time_seconds") <= time.time()


async def test_model_gauges(asgi_client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]) -> None:
    metrics = await _scrape(asgi_client, parse_metrics)
    info = metrics.find("sbnn_model_info", model=MODEL)
    assert len(info) == 1
    labels, value = info[0]
    assert value == 1.0
    assert labels["sha256"] == BUNDLED_SHA256 and labels["version"] == "1" and labels["kind"] == "lowrank"
    assert labels["rank"] == "9/15/1"
    assert metrics.value("sbnn_model_ready", model=MODEL) == 1.0
    assert metrics.value("sbnn_model_ready", model="tiny") == 1.0
    assert metrics.value("sbnn_model_ready", model="broken") == 0.0
    assert metrics.find("sbnn_model_info", model="broken") == []


async def test_traffic_moves_the_counters(
    asgi_client: httpx.AsyncClient, parse_metrics: Callable[[str], Any], flchain_row: dict[str, Any]
) -> None:
    before = await _scrape(asgi_client, parse_metrics)
    elderly = {**flchain_row, "age": 95}
    umol = {**flchain_row, "creatinine": flchain_row["creatinine"] * 88.4}
    for seed in range(3):
        response = await asgi_client.post(
            f"/v1/models/{MODEL}/predict", json={"instances": [flchain_row, elderly, umol], "seed": seed}
        )
        assert response.status_code == 200
        assert [p["decision"] for p in response.json()["predictions"]] == ["accept", "refer", "reject"]
    missing = await asgi_client.post(f"/v1/models/{MODEL}/predict", json={"instances": []})
    assert missing.status_code == 422
    after = await _scrape(asgi_client, parse_metrics)

    def delta(name: str, **labels: str) -> float:
        return after.count(name, **labels) - before.count(name, **labels)

    duration = "sbnn_request_duration_seconds_count"
    assert delta(duration, model=MODEL, route=PREDICT_ROUTE, status="200") == 3
    assert delta(duration, model=MODEL, route=PREDICT_ROUTE, status="422") == 1
    assert delta("sbnn_predictions_total", model=MODEL) == 9
    for decision in ("accept", "refer", "reject"):
        assert delta("sbnn_decisions_total", model=MODEL, decision=decision) == 3, decision
    assert delta("sbnn_gate_reasons_total", model=MODEL, reason="support") == 3
    assert delta("sbnn_gate_reasons_total", model=MODEL, reason="bounds") == 3
    assert delta("sbnn_epistemic_uncertainty_nats_count", model=MODEL) == 6  # rejected rows are not scored
    assert delta("sbnn_inference_stage_duration_seconds_count", model=MODEL, stage="queue") == 3
    assert delta("sbnn_inference_stage_duration_seconds_count", model=MODEL, stage="compute") >= 1
    assert delta("sbnn_batch_rows_sum", model=MODEL) == 6
    assert after.value("sbnn_inference_stage_duration_seconds_sum", model=MODEL, stage="compute") > 0.0


async def test_unknown_model_requests_are_labelled_unknown(
    asgi_client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]
) -> None:
    before = await _scrape(asgi_client, parse_metrics)
    response = await asgi_client.get("/v1/models/some-random-name")
    assert response.status_code == 404
    after = await _scrape(asgi_client, parse_metrics)
    labels = {"model": "unknown", "route": "/v1/models/{name}", "status": "404"}
    assert after.count("sbnn_request_duration_seconds_count", **labels) == (
        before.count("sbnn_request_duration_seconds_count", **labels) + 1
    )
    assert after.find("sbnn_request_duration_seconds_count", model="some-random-name") == []


async def test_the_metrics_port_serves_the_same_registry_and_startup_can_wait_for_the_models(
    serve_settings: Settings, parse_metrics: Callable[[str], Any], flchain_row: dict[str, Any], free_port: Any
) -> None:
    """SBNN_METRICS_PORT: a second listener with only the metrics (a per-process scrape target behind a proxy
    that spreads requests, as Ray Serve's); SBNN_LOAD_BEFORE_SERVING: the lifespan's startup returns only once
    the repository has loaded, so a host that routes when startup ends never sees 'loading'."""
    port = free_port()
    settings = serve_settings.model_copy(update={"metrics_port": port, "load_before_serving": True})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sbnn.test") as client:
            assert (await client.get("/v2/health/ready")).status_code == 200  # no wait: startup did
            response = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [flchain_row] * 3})
            assert response.status_code == 200
            async with httpx.AsyncClient() as scraper:
                direct = await scraper.get(f"http://127.0.0.1:{port}/metrics")
            assert direct.status_code == 200
            assert parse_metrics(direct.text).value("sbnn_predictions_total", model=MODEL) == 3
            assert parse_metrics(direct.text).value("sbnn_model_ready", model=MODEL) == 1
    with pytest.raises(httpx.ConnectError):  # the listener closes with the app
        async with httpx.AsyncClient() as scraper:
            await scraper.get(f"http://127.0.0.1:{port}/metrics")
