"""The compute budget and a request's own deadline (app/serve/dataplane.py, app/serve/batching.py): a request
estimated over the server's compute or memory per request is refused before it runs, naming the limit and what
would fit; a request may ask for a shorter deadline than the server's (/v1 ``timeout_s``, /v2 Triton's
``parameters.timeout`` in microseconds, gRPC's own deadline)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest

from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
async def budgeted(
    serve_settings: Settings, app_client: Callable[[Settings], Any], free_port: Callable[[], int]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, str]]:
    """An app allowing 0.05 s of estimated compute and 64 MB of estimated memory per request, gRPC on."""
    port = free_port()
    update = {"max_request_compute_s": 0.05, "max_request_memory_mb": 64.0, "grpc_port": port}
    async with app_client(serve_settings.model_copy(update=update)) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        yield client, app.state.dataplane.engine, f"127.0.0.1:{port}"


async def test_over_the_compute_budget_is_refused_before_running_naming_what_fits(
    budgeted: tuple[httpx.AsyncClient, Any, str],
    flchain_row: dict[str, Any],
    to_v2: Callable[..., list[dict[str, Any]]],
    parse_metrics: Callable[[str], Any],
) -> None:
    client, _, _ = budgeted
    before = parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total", model=MODEL)
    body = {"instances": [flchain_row] * 64, "samples": 2048, "sampler": "local", "seed": 1}
    refused = await client.post(PREDICT, json=body)
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "samples"]
    assert "64 rows × 2048 samples (local) is estimated at" in error["msg"]
    assert "over this server's 0.05 s (SBNN_MAX_REQUEST_COMPUTE_S) per request" in error["msg"]
    assert "samples for these rows, or" in error["msg"] and "would fit" in error["msg"]
    v2 = await client.post(INFER, json={"inputs": to_v2([flchain_row] * 64), "parameters": body | {"instances": 0}})
    assert v2.status_code == 400 and v2.json()["error"].startswith("parameters.samples: 64 rows × 2048 samples")
    after = parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total", model=MODEL)
    assert after == before  # nothing ran
    assert (await client.post(PREDICT, json={"instances": [flchain_row]})).status_code == 200  # the default fits


async def test_over_the_memory_budget_is_refused_naming_the_setting(
    budgeted: tuple[httpx.AsyncClient, Any, str], flchain_row: dict[str, Any]
) -> None:
    client, _, _ = budgeted
    # The bank's 512 samples through 64 rows: a piece's activations are estimated at over 64 MB (cheap compute).
    refused = await client.post(PREDICT, json={"instances": [flchain_row] * 64})
    assert refused.status_code == 422, refused.text
    message = refused.json()["detail"][0]["msg"]
    assert message.startswith("64 rows × 512 samples (bank) is estimated at ")
    assert "MB of memory, over this server's 64 MB (SBNN_MAX_REQUEST_MEMORY_MB) per request" in message
    assert (await client.post(PREDICT, json={"instances": [flchain_row] * 8})).status_code == 200


async def test_a_request_may_ask_a_shorter_deadline(
    budgeted: tuple[httpx.AsyncClient, Any, str],
    flchain_row: dict[str, Any],
    to_v2: Callable[..., list[dict[str, Any]]],
    hold_compute: Callable[[Any], Any],
) -> None:
    client, engine, _ = budgeted
    with hold_compute(engine):
        late = await client.post(PREDICT, json={"instances": [flchain_row], "timeout_s": 0.2})
        assert late.status_code == 504, late.text
        assert late.json() == {"detail": "not answered within the request's 0.2 s deadline"}
        late = await client.post(INFER, json={"inputs": to_v2([flchain_row]), "parameters": {"timeout": 200_000}})
        assert late.status_code == 504, late.text
        assert late.json() == {"error": "not answered within the request's 0.2 s deadline"}
    ok = await client.post(PREDICT, json={"instances": [flchain_row], "timeout_s": 5})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("path", "options", "field"),
    [
        (PREDICT, {"timeout_s": 0}, "timeout_s"),
        (PREDICT, {"timeout_s": "1"}, "timeout_s"),
        (PREDICT, {"timeout_s": True}, "timeout_s"),
        (INFER, {"timeout": 0}, "parameters.timeout"),
        (INFER, {"timeout": 1.5}, "parameters.timeout"),
        (INFER, {"timeout": "100"}, "parameters.timeout"),
    ],
)
async def test_a_malformed_deadline_is_refused_by_name(
    budgeted: tuple[httpx.AsyncClient, Any, str],
    flchain_row: dict[str, Any],
    to_v2: Callable[..., list[dict[str, Any]]],
    path: str,
    options: dict[str, Any],
    field: str,
) -> None:
    client, _, _ = budgeted
    if path == PREDICT:
        answer = await client.post(path, json={"instances": [flchain_row], **options})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", field]
    else:
        answer = await client.post(path, json={"inputs": to_v2([flchain_row]), "parameters": options})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith(f"{field}: ")


async def test_grpc_refuses_over_budget_and_keeps_the_clients_deadline(
    budgeted: tuple[httpx.AsyncClient, Any, str],
    flchain_row: dict[str, Any],
    one_row_grpc: Callable[..., Any],
    hold_compute: Callable[[Any], Any],
) -> None:
    _, engine, address = budgeted
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = one_row_grpc(MODEL, flchain_row)
        for tensor in request.inputs:  # 64 copies of the row
            tensor.shape[0] = 64
            values = tensor.contents.bytes_contents if tensor.datatype == "BYTES" else tensor.contents.fp64_contents
            values.extend(list(values) * 63)
        request.parameters["samples"].int64_param = 2048
        request.parameters["sampler"].string_param = "local"
        request.parameters["seed"].int64_param = 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("parameters.samples: 64 rows × 2048 samples (local)")
        with hold_compute(engine):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(one_row_grpc(MODEL, flchain_row), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
