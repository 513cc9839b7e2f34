"""API keys with scopes (app/serve/auth.py) on REST and gRPC: open health probes, 401/403 in each surface's
shape, rotation by rewriting the keys file, key ids (never tokens) in the access log, docs access, CORS, the
refusal to serve a non-loopback address open, and `sbnn keys new`."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from app.cli import app as cli
from app.serve import auth
from app.serve.app import create_app
from app.serve.auth import DocsAccess, KeyScope, keys_json, new_key, token_hash
from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
PREDICT = f"/v1/models/{MODEL}/predict"
INFER = f"/v2/models/{MODEL}/infer"
V2_BODY = {
    "inputs": [
        {"name": k, "shape": [1], "datatype": "BYTES" if k == "sex" else "FP64", "data": [v]} for k, v in ROW.items()
    ]
}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three keys (infer, metrics, admin) in a keys file; their tokens by scope, and the file."""
    folder = tmp_path_factory.mktemp("keys")
    made = {scope: new_key(f"{scope.value}-key", [scope]) for scope in KeyScope}
    path = folder / "keys.json"
    path.write_text(keys_json([entry for _, entry in made.values()]))
    return {"file": path, **{scope.value: token for scope, (token, _) in made.items()}}


@pytest.fixture(scope="module")
async def served(
    serve_settings: Settings,
    app_client: Callable[[Settings], Any],
    tokens: dict[str, Any],
    free_port: Callable[[], int],
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An app with API keys and gRPC on: its client and the gRPC address."""
    port = free_port()
    settings = serve_settings.model_copy(update={"api_keys_file": tokens["file"], "grpc_port": port})
    async with app_client(settings) as client:
        yield client, f"127.0.0.1:{port}"


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_health_probes_need_no_key(served: tuple[httpx.AsyncClient, str]) -> None:
    client = served[0]
    for path in ("/", "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        assert (await client.get(path)).status_code == 200, path
        assert (await client.head(path)).status_code == 200, path


@pytest.mark.parametrize(
    ("method", "path", "body", "shape"),
    [
        ("POST", PREDICT, {"instances": [ROW]}, "detail"),
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [ROW]}, "detail"),
        ("POST", INFER, V2_BODY, "error"),
        ("GET", "/v1/models", None, "detail"),
        ("GET", f"/v2/models/{MODEL}", None, "error"),
        ("GET", "/v2", None, "error"),
        ("GET", "/metrics", None, "detail"),
        ("GET", "/openapi.json", None, "detail"),
    ],
)
async def test_without_a_valid_key_is_401_in_the_surface_shape(
    served: tuple[httpx.AsyncClient, str], method: str, path: str, body: Any, shape: str
) -> None:
    client = served[0]
    for headers in ({}, _bearer("sbnn_not-a-key"), {"authorization": "Basic dXNlcjpwYXNz"}):
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert set(response.json()) == {shape}
        assert "Bearer" in response.json()[shape] or "not valid" in response.json()[shape]


async def test_scopes_grant_their_routes_only(served: tuple[httpx.AsyncClient, str], tokens: dict[str, Any]) -> None:
    client = served[0]
    infer, metrics = _bearer(tokens["infer"]), _bearer(tokens["metrics"])
    assert (await client.post(PREDICT, json={"instances": [ROW]}, headers=infer)).status_code == 200
    assert (await client.post(INFER, json=V2_BODY, headers=infer)).status_code == 200
    assert (await client.get("/openapi.json", headers=infer)).status_code == 200  # docs: behind infer
    denied = await client.get("/metrics", headers=infer)
    assert denied.status_code == 403 and denied.json() == {"detail": "key 'infer-key' lacks the 'metrics' scope"}
    assert (await client.get("/metrics", headers=metrics)).status_code == 200
    denied = await client.post(INFER, json=V2_BODY, headers=metrics)
    assert denied.status_code == 403 and denied.json() == {"error": "key 'metrics-key' lacks the 'infer' scope"}
    admin = await client.post("/v2/repository/index", headers=_bearer(tokens["admin"]))
    assert admin.status_code == 200 and isinstance(admin.json(), list)
    assert (await client.post("/v2/repository/index", headers=infer)).status_code == 403
    unload = f"/v2/repository/models/{MODEL}/unload"
    assert (await client.post(unload, headers=infer)).status_code == 403  # an infer key cannot unload


async def test_the_access_log_names_the_key_never_the_token(
    served: tuple[httpx.AsyncClient, str], tokens: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sbnn.serve.access"):
        await served[0].post(PREDICT, json={"instances": [ROW]}, headers=_bearer(tokens["infer"]))
        await served[0].post(PREDICT, json={"instances": [ROW]}, headers=_bearer("sbnn_wrong"))
    lines = [r.getMessage() for r in caplog.records if r.name == "sbnn.serve.access"]
    assert any(" 200 " in line and "key_id=infer-key" in line for line in lines), lines
    assert any(" 401 " in line and "key_id=-" in line for line in lines), lines
    assert not any(tokens["infer"] in line or "sbnn_wrong" in line for line in lines)


async def test_grpc_needs_the_key_in_its_metadata(
    served: tuple[httpx.AsyncClient, str], tokens: dict[str, Any], one_row_grpc: Callable[..., Any]
) -> None:
    request = one_row_grpc(MODEL, ROW)
    async with grpc.aio.insecure_channel(served[1]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))).ready
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer sbnn_wrong"),), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", f"Bearer {tokens['metrics']}"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await stub.ModelInfer(request, metadata=(("authorization", f"Bearer {tokens['infer']}"),))
        assert answer.model_name == MODEL


async def test_keys_rotate_by_rewriting_the_file(
    serve_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    old, old_entry = new_key("old", [KeyScope.INFER])
    new, new_entry = new_key("new", [KeyScope.INFER])
    path = tmp_path / "keys.json"
    path.write_text(keys_json([old_entry]))
    app = create_app(serve_settings.model_copy(update={"api_keys_file": path}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sbnn.test") as client:
        assert (await client.get("/v2", headers=_bearer(old))).status_code == 200
        assert (await client.get("/v2", headers=_bearer(new))).status_code == 401
        path.write_text(keys_json([new_entry]))
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # a new modification time however fast
        assert (await client.get("/v2", headers=_bearer(new))).status_code == 200
        assert (await client.get("/v2", headers=_bearer(old))).status_code == 401
        path.write_text("{not json")
        os.utime(path, ns=(path.stat().st_mtime_ns + 2 * 10**9,) * 2)
        assert (await client.get("/v2", headers=_bearer(new))).status_code == 200  # the last good keys


def test_a_non_loopback_address_without_keys_is_refused(serve_settings: Settings, tokens: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="refusing to serve 0.0.0.0 without API keys"):
        create_app(serve_settings.model_copy(update={"host": "0.0.0.0"}))
    create_app(serve_settings.model_copy(update={"host": "0.0.0.0", "allow_unauthenticated": True}))
    create_app(serve_settings.model_copy(update={"host": "0.0.0.0", "api_keys_file": tokens["file"]}))
    create_app(serve_settings.model_copy(update={"host": "::1"}))


def test_a_bad_keys_file_is_refused_at_start(serve_settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text(json.dumps({"keys": [{"id": "a", "sha256": "not-hex", "scopes": ["infer"]}]}))
    with pytest.raises(ValueError, match="keys.json: keys.0.sha256"):
        create_app(serve_settings.model_copy(update={"api_keys_file": bad}))
    with pytest.raises(ValueError, match="not a file"):
        create_app(serve_settings.model_copy(update={"api_keys_file": tmp_path / "absent.json"}))


@pytest.mark.parametrize(("docs", "anonymous"), [("public", 200), ("infer", 401), ("off", 401)])
async def test_docs_access(serve_settings: Settings, tokens: dict[str, Any], docs: str, anonymous: int) -> None:
    settings = serve_settings.model_copy(update={"api_keys_file": tokens["file"], "docs": DocsAccess(docs)})
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sbnn.test") as client:
        for path in ("/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == anonymous, path
            keyed = await client.get(path, headers=_bearer(tokens["infer"]))
            assert keyed.status_code == (404 if docs == "off" else 200), path


async def test_cors_allow_list(serve_settings: Settings, tokens: dict[str, Any]) -> None:
    origin = "https://ward.example.org"
    settings = serve_settings.model_copy(update={"api_keys_file": tokens["file"], "cors_origins": [origin]})
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sbnn.test") as client:
        preflight = {"origin": origin, "access-control-request-method": "POST"}
        allowed = await client.options(INFER, headers={**preflight, "access-control-request-headers": "authorization"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin
        other = await client.options(INFER, headers={**preflight, "origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        answer = await client.get("/v2", headers={"origin": origin, **_bearer(tokens["infer"])})
        assert answer.headers["access-control-allow-origin"] == origin


def test_keys_new_writes_the_hash_and_prints_the_token_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    runner = CliRunner()
    done = runner.invoke(
        cli, ["keys", "new", "--id", "ward-7", "--scope", "infer", "--scope", "metrics", "--file", path]
    )
    assert done.exit_code == 0, done.output
    token = done.stdout.strip().splitlines()[-1]
    stored = json.loads(path.read_text())
    assert stored == {"keys": [{"id": "ward-7", "sha256": token_hash(token), "scopes": ["infer", "metrics"]}]}
    assert token not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = runner.invoke(cli, ["keys", "new", "--id", "ward-7", "--file", str(path)])
    assert again.exit_code == 2 and "already has a key 'ward-7'" in again.output


def test_sbnn_serve_sends_no_server_header_and_passes_the_key_options(
    monkeypatch: pytest.MonkeyPatch, tokens: dict[str, Any], model_repository: Path
) -> None:
    from app.serve.http_protocol import GracefulServer

    seen: dict[str, Any] = {}

    def record(server: GracefulServer) -> None:  # nothing binds: the options are what this test reads
        seen.update(host=server.config.host, server_header=server.config.server_header)
        server.started = True

    monkeypatch.setattr(GracefulServer, "run", record)
    args = ["serve", "--models", str(model_repository), "--host", "0.0.0.0", "--api-keys-file", str(tokens["file"])]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert seen["server_header"] is False and seen["host"] == "0.0.0.0"
    refused = CliRunner().invoke(cli, ["serve", "--models", str(model_repository), "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "refusing to serve 0.0.0.0 without API keys" in refused.output
    opened = CliRunner().invoke(
        cli, ["serve", "--models", str(model_repository), "--host", "0.0.0.0", "--allow-unauthenticated"]
    )
    assert opened.exit_code == 0, opened.output
