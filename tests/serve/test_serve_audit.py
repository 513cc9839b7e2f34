"""The audit trail wired into the server (app/serve/audit.py): one PHI-free record per prediction request on
/v1, KServe V1, /v2 and gRPC, errors included, with the request id and key id; a full queue under
fail_closed turns requests away with 503 before they run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import grpc
import httpx
import pytest

from app.audit.export import write_csv
from app.audit.store import AuditStore
from app.audit.writer import AuditWriter, Overflow
from app.serve.app import create_app
from app.serve.auth import KeyScope, keys_json, new_key
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
# A distinctive value, to look for in the stored trail (it must not be there).
ROW = {"age": 62, "sex": "F", "kappa": 1.2345678, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
ROWS = [ROW, {**ROW, "age": 95}, {**ROW, "age": 10000}]


def _v2(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": k,
                "shape": [len(rows)],
                "datatype": "BYTES" if k == "sex" else "FP64",
                "data": [r[k] for r in rows],
            }
            for k in rows[0]
        ]
    }


async def test_every_prediction_request_is_recorded_without_patient_data(
    serve_settings: Settings,
    app_client: Callable[[Settings], Any],
    tmp_path: Path,
    one_row_grpc: Callable[..., Any],
    free_port: Callable[[], int],
) -> None:
    token, entry = new_key("ward-7", [KeyScope.INFER])
    keys = tmp_path / "keys.json"
    keys.write_text(keys_json([entry]))
    port = free_port()
    settings = serve_settings.model_copy(
        update={"audit_dir": tmp_path / "audit", "api_keys_file": keys, "grpc_port": port}
    )
    auth = {"authorization": f"Bearer {token}"}
    async with app_client(settings) as client:
        v1 = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": ROWS}, headers=auth)
        kserve = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": ROWS[:1]}, headers=auth)
        v2 = await client.post(f"/v2/models/{MODEL}/infer", json=_v2(ROWS[:2]), headers=auth)
        bad = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": []}, headers=auth)
        unknown = await client.post("/v2/models/Jane-Doe-1961/infer", json=_v2(ROWS[:1]), headers=auth)
        assert [r.status_code for r in (v1, kserve, v2, bad, unknown)] == [200, 200, 200, 400, 404]
        request = one_row_grpc(MODEL, ROW)
        metadata = (("authorization", f"Bearer {token}"), ("x-request-id", "grpc-call-1"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata)
        await client.get("/v2/health/ready")  # not a prediction: not recorded
    # The lifespan has ended: the writer flushed what was queued.
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit' / 'audit.db'}")
    now = datetime.now(UTC)
    records = store.query(now - timedelta(minutes=10), now + timedelta(minutes=1))
    assert len(records) == 6
    by_id = {r.request_id: r for r in records}
    first = by_id[v1.headers["x-request-id"]]
    assert (first.surface.value, first.route, first.status, first.key_id) == (
        "v1",
        "/v1/models/{name}/predict",
        "200",
        "ward-7",
    )
    assert (first.rows, first.accept, first.refer, first.reject) == (3, 1, 1, 1)
    assert first.reasons == {"bounds": 1, "support": 1} and first.model == MODEL and first.samples > 0
    assert first.model_sha256 and first.model_version == "1"
    assert by_id[kserve.headers["x-request-id"]].surface.value == "kserve_v1"
    assert by_id[v2.headers["x-request-id"]].route == "/v2/models/{name}/infer"
    refused = by_id[bad.headers["x-request-id"]]
    assert (refused.status, refused.rows, refused.model, refused.model_sha256) == ("400", 0, MODEL, "")
    assert by_id[unknown.headers["x-request-id"]].model == ""  # a name no model has is not kept
    call = by_id["grpc-call-1"]
    assert (call.surface.value, call.status, call.key_id, call.rows) == ("grpc", "OK", "ward-7", 1)
    exported = tmp_path / "trail.csv"
    write_csv(records, exported)
    text = exported.read_text()
    assert "1.2345678" not in text and "Jane-Doe" not in text and token not in text
    store.close()


class _Held:
    """A real SQLite store whose writes wait until released: the queue fills behind it."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.release = threading.Event()

    def insert_many(self, records: list[Any]) -> int:
        self.release.wait(30)
        return self.store.insert_many(records)

    def close(self) -> None:
        self.store.close()


async def test_a_full_queue_under_fail_closed_is_503_before_running(
    serve_settings: Settings, tmp_path: Path, parse_metrics: Callable[[str], Any]
) -> None:
    app = create_app(serve_settings.model_copy(update={"audit_dir": tmp_path / "audit"}))
    held = _Held(AuditStore.open(f"sqlite:///{tmp_path / 'held.db'}"))
    writer = AuditWriter(held, queue_size=1, overflow=Overflow.FAIL_CLOSED, linger_s=0.0)  # one record a batch
    async with app.router.lifespan_context(app):
        # The app's own writer is swapped for one whose store holds every write.
        trail = next(m.kwargs["trail"] for m in app.user_middleware if "trail" in m.kwargs)
        own, trail.writer = trail.writer, writer
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sbnn.test") as client:
            while (await client.get("/v2/health/ready")).status_code != 200:
                await anyio.sleep(0.05)
            path = f"/v1/models/{MODEL}/predict"
            first = await client.post(path, json={"instances": ROWS[:1]})  # taken by the writer's thread
            while writer.pending:
                await anyio.sleep(0.01)
            second = await client.post(path, json={"instances": ROWS[:1]})  # fills the queue
            assert first.status_code == second.status_code == 200
            before = parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total", model=MODEL)
            refused = await client.post(path, json={"instances": ROWS[:1]})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json() == {"detail": "the audit trail is behind: retry shortly"}
            metrics = parse_metrics((await client.get("/metrics")).text)
            assert metrics.count("sbnn_predictions_total", model=MODEL) == before  # refused before it ran
            assert metrics.count("sbnn_audit_requests_turned_away_total") == 1  # what /metrics tells the operator
            assert metrics.count("sbnn_audit_records_dropped_total") == 0
            assert metrics.count("sbnn_audit_queue_records") == 1
        held.release.set()
        trail.writer = own
    assert writer.close(10) and writer.written == 2
    held.close()
