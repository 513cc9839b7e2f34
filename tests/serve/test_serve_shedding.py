"""Load shedding and deadlines (app/serve/batching.py): beyond ``max_queued_rows`` rows waiting or running for a
model a request is a 503 with Retry-After at once (gRPC UNAVAILABLE); one not answered within
``request_timeout_s`` is a 504 (gRPC DEADLINE_EXCEEDED) and its rows, still waiting for the compute thread,
are never computed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import grpc
import httpx
import pytest

from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}


@pytest.fixture(scope="module")
async def shedding(
    serve_settings: Settings, app_client: Callable[[Settings], Any], free_port: Callable[[], int]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, str]]:
    """An app taking at most 2 queued rows per model, with a 1 s deadline and gRPC on."""
    port = free_port()
    settings = serve_settings.model_copy(update={"max_queued_rows": 2, "request_timeout_s": 1.0, "grpc_port": port})
    async with app_client(settings) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        yield client, app.state.dataplane.engine, f"127.0.0.1:{port}"


async def test_rows_beyond_the_queue_are_503_with_retry_after_and_do_not_run(
    shedding: tuple[httpx.AsyncClient, Any, str],
    parse_metrics: Callable[[str], Any],
    hold_compute: Callable[[Any], Any],
) -> None:
    client, engine, _ = shedding
    answers: list[httpx.Response] = []

    async def predict() -> None:
        answers.append(await client.post(PREDICT, json={"instances": [ROW]}))

    before = parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total", model=MODEL)
    with hold_compute(engine) as release:
        async with anyio.create_task_group() as group:
            group.start_soon(predict)
            group.start_soon(predict)
            await anyio.sleep(0.3)  # both queued behind the held thread: 2 rows, the limit
            refused = await client.post(PREDICT, json={"instances": [ROW]})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "has 2 rows waiting or running" in refused.json()["detail"]
            release.set()
    assert [a.status_code for a in answers] == [200, 200]
    after = parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total", model=MODEL)
    assert after - before == 2
    assert (await client.post(PREDICT, json={"instances": [ROW]})).status_code == 200  # the queue drained


async def test_past_the_deadline_is_504_and_the_queued_work_is_dropped(
    shedding: tuple[httpx.AsyncClient, Any, str],
    parse_metrics: Callable[[str], Any],
    hold_compute: Callable[[Any], Any],
) -> None:
    client, engine, _ = shedding
    metrics = parse_metrics((await client.get("/metrics")).text)
    before = metrics.count("sbnn_predictions_total", model=MODEL)
    rows = metrics.count("sbnn_batch_rows_sum", model=MODEL)
    with hold_compute(engine):
        late = await client.post(f"/v2/models/{MODEL}/infer", json=_v2())
        assert late.status_code == 504, late.text
        assert late.json() == {"error": "not answered within the server's 1 s deadline"}
    await anyio.sleep(0.2)  # the held thread is free: the batch it was given comes back with nothing computed
    metrics = parse_metrics((await client.get("/metrics")).text)
    assert metrics.count("sbnn_predictions_total", model=MODEL) == before
    assert metrics.count("sbnn_batch_rows_sum", model=MODEL) == rows  # no pass carried its row
    assert engine._rows[MODEL] == 0  # its rows no longer count against the queue


async def test_grpc_maps_shedding_and_deadlines(
    shedding: tuple[httpx.AsyncClient, Any, str], one_row_grpc: Callable[..., Any], hold_compute: Callable[[Any], Any]
) -> None:
    _, engine, address = shedding
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with hold_compute(engine):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(one_row_grpc(MODEL, ROW))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.details() == "not answered within the server's 1 s deadline"
        with hold_compute(engine) as release:
            queued = [stub.ModelInfer(one_row_grpc(MODEL, ROW)) for _ in range(2)]
            await anyio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(one_row_grpc(MODEL, ROW))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            for call in queued:
                assert (await call).model_name == MODEL


def _v2() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": k, "shape": [1], "datatype": "BYTES" if k == "sex" else "FP64", "data": [v]}
            for k, v in ROW.items()
        ]
    }
