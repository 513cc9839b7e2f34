"""The FastAPI application: ``create_app(settings)``; no work at import time.

Checkpoints load in the lifespan on the repository's loader thread, so /v2/health/live answers at once and
/v2/health/ready turns 200 once the models asked for are ready (all of them, or any with ``ready_when``).
Errors are mapped to HTTP here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import SchemaError
from app.serve.api import kserve_v1, ops, v1, v2
from app.serve.api import repository as repository_api
from app.serve.api.schemas_v1 import instance_loc
from app.serve.api.v2_binary import HEADER
from app.serve.audit import AuditCollector, AuditMiddleware, AuditTrail
from app.serve.auth import AuthMiddleware, DocsAccess, KeyRing
from app.serve.backend import BackendKind
from app.serve.batching import BatchingEngine
from app.serve.dataplane import DataPlane
from app.serve.errors import DeadlineExceeded, ModelNotFound, ModelNotReady, Overloaded, RequestRejected
from app.serve.metrics import ServiceMetrics
from app.serve.middleware import (
    BodyLimitMiddleware,
    HeadMiddleware,
    LatencyMiddleware,
    RequestBodyMiddleware,
    RequestIdMiddleware,
)
from app.serve.repository import ModelRepository
from app.serve.settings import Settings
from app.serve.tracing import Tracing
from app.serve.watch import ModelWatcher

if TYPE_CHECKING:
    from app.audit.writer import AuditWriter

log = logging.getLogger("sbnn.serve")
GRPC_GRACE_S = 10.0  # how long gRPC calls in flight may finish at shutdown
AUDIT_CLOSE_S = 30.0  # how long the audit writer may take to write what is queued at shutdown


def _is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2")


def _error(request: Request, status: int, field: str | None, message: str) -> JSONResponse:
    """v2: {"error": "..."} as the Open Inference Protocol says; v1: FastAPI's {"detail": ...} shape."""
    if _is_v2(request):
        return JSONResponse({"error": f"{field}: {message}" if field else message}, status_code=status)
    if field is None:
        return JSONResponse({"detail": message}, status_code=status)
    loc = ["body", *field.replace("]", "").replace("[", ".").split(".")]
    # A row index is a short ASCII number; a client's key made of digits (or "²") stays a string.
    loc = [int(part) if part.isascii() and part.isdigit() and len(part) < 19 else part for part in loc]
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelNotFound)
    async def _not_found(request: Request, exc: ModelNotFound) -> JSONResponse:
        return _error(request, 404, None, str(exc))

    @app.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return _error(request, 503, None, str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        response = _error(request, 503, None, exc.reason)
        response.headers["retry-after"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _error(request, 504, None, str(exc))

    @app.exception_handler(SchemaError)
    async def _schema(request: Request, exc: SchemaError) -> JSONResponse:
        return _error(request, 400 if _is_v2(request) else 422, exc.field, exc.reason)

    @app.exception_handler(RequestRejected)
    async def _rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return _error(request, 400 if _is_v2(request) else 422, exc.field, exc.reason)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods: keep each surface's error shape (404/405 on /v2 as {"error": …}).
        response = _error(request, exc.status_code, None, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if _is_v2(request):
            first = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
            where = ".".join(str(p) for p in first["loc"])
            return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=400)
        detail = [{"loc": instance_loc(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse({"detail": detail}, status_code=422)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keys(settings: Settings) -> KeyRing:
    """The API keys; refuses a non-loopback address without any, unless ``allow_unauthenticated`` says so."""
    keys = KeyRing(settings.api_keys_file, settings.api_keys)
    if not keys.enabled and not _is_loopback(settings.host) and not settings.allow_unauthenticated:
        raise ValueError(
            f"refusing to serve {settings.host} without API keys: anyone who can reach it could call every route. "
            "Configure keys (SBNN_API_KEYS_FILE or SBNN_API_KEYS; `sbnn keys new` makes one), or pass "
            "--allow-unauthenticated (SBNN_ALLOW_UNAUTHENTICATED=true) to serve it open"
        )
    return keys


def _audit_writer_importable() -> None:
    """Refuse at start, in words, an audit trail without the audit extra (SQLAlchemy)."""
    if importlib.util.find_spec("sqlalchemy") is None:
        raise ImportError("the audit trail (SBNN_AUDIT_DIR / SBNN_AUDIT_URL) needs the audit extra: sbnn[audit]")


def _audit_writer(settings: Settings) -> AuditWriter:
    """Open (and migrate) the audit database and start its writer; a database that cannot be opened stops the
    start-up, since requests would otherwise go unrecorded."""
    from app.audit.store import AuditStore, safe_url
    from app.audit.writer import AuditWriter

    url = settings.audit_database
    assert url is not None
    if settings.audit_dir is not None and not settings.audit_url:
        settings.audit_dir.mkdir(parents=True, exist_ok=True)
    store = AuditStore.open(url)
    log.info("audit trail: %s (%s when full)", safe_url(url), settings.audit_overflow.value)
    return AuditWriter(store, settings.audit_queue, settings.audit_overflow)


async def _prune_daily(writer: AuditWriter, days: int | None) -> None:
    """Delete records older than ``days`` at start and then once a day (None: keep everything)."""
    if days is None:
        return
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            removed = await asyncio.to_thread(writer.store.delete_older_than, cutoff)  # type: ignore[attr-defined]
            log.info("audit trail: %d records older than %d days deleted", removed, days)
        except Exception as exc:  # a failed prune is retried tomorrow; serving goes on
            log.error("audit trail: pruning failed (%s)", type(exc).__name__)
        await asyncio.sleep(24 * 3600)


def use_tmp_dir(folder: Path | None) -> None:
    """Point temporary files and the caches torch and matplotlib may write at ``folder`` (a writable volume on
    a read-only root filesystem); None leaves TMPDIR as the environment set it."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # tempfile reads TMPDIR again on next use
    for variable, sub in [("XDG_CACHE_HOME", "cache"), ("MPLCONFIGDIR", "matplotlib"), ("TRITON_CACHE_DIR", "triton")]:
        os.environ.setdefault(variable, str(folder / sub))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "torchinductor"))


def _metrics_listener(settings: Settings, metrics: ServiceMetrics) -> Any:
    """prometheus-client's own HTTP server for ``SBNN_METRICS_PORT`` (its thread serves only the metrics), or
    None when the port is 0."""
    if not settings.metrics_port:
        return None
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    except OSError as exc:
        raise RuntimeError(f"metrics: cannot listen on {settings.host}:{settings.metrics_port}: {exc}") from None
    return server


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    use_tmp_dir(settings.tmp_dir)  # before torch is imported: its compiler asks for a temporary folder
    keys = _keys(settings)
    if settings.audit_database:
        _audit_writer_importable()
    metrics = ServiceMetrics(CollectorRegistry())
    if settings.backend is not BackendKind.ONNX and importlib.util.find_spec("torch"):
        from app.device import resolve_device

        resolve_device(settings.device)  # refuse an unusable device at start, not per model
    if not settings.models.is_dir():
        raise ValueError(
            f"the model repository {settings.models} does not exist (SBNN_MODELS / --models): nothing to serve"
        )
    repository = ModelRepository(
        settings.models,
        settings.device,
        settings.bank_samples,
        settings.bank_seed,
        settings.backend,
        settings.version_policy,
        settings.pinned_versions,
        settings.ready_when,
    )
    engine = BatchingEngine(settings, metrics, Tracing(settings.tracing))
    dataplane = DataPlane(settings, repository, engine, metrics)
    trail = AuditTrail(known=lambda name: name in repository.names())
    metrics.registry.register(AuditCollector(trail))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer = await asyncio.to_thread(_audit_writer, settings) if settings.audit_database else None
        trail.writer = writer
        grpc_server = None
        if settings.grpc_port:
            from app.serve.grpc.server import GrpcServer  # grpc is imported only when it serves

            grpc_server = GrpcServer(dataplane, settings.host, settings.grpc_port, settings.max_body_bytes, keys, trail)
            dataplane.readiness_listeners.append(grpc_server.set_ready)
        loader = asyncio.get_running_loop().run_in_executor(repository.loader, repository.load_all)
        loader.add_done_callback(lambda _: dataplane.publish_state())
        pruning = asyncio.create_task(_prune_daily(writer, settings.audit_retention_days)) if writer else None
        watching = (
            asyncio.create_task(ModelWatcher(dataplane, settings.watch_debounce_s).run()) if settings.watch else None
        )
        scrapes = _metrics_listener(settings, metrics)
        try:
            if grpc_server is not None:
                await grpc_server.start()
            if settings.load_before_serving:
                await asyncio.shield(loader)  # its failures are the models' states, as without the wait
            yield
        finally:
            if scrapes is not None:
                await asyncio.to_thread(scrapes.shutdown)
                scrapes.server_close()
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            if grpc_server is not None:  # uvicorn has drained HTTP before the lifespan ends; now gRPC drains
                await grpc_server.stop(GRPC_GRACE_S)
            await asyncio.to_thread(repository.close)  # a load in progress finishes first
            await engine.close()
            if pruning is not None:
                pruning.cancel()
            if writer is not None:  # every request has been answered: write what is queued, then close
                trail.writer = None
                await asyncio.to_thread(writer.close, AUDIT_CLOSE_S)
                await asyncio.to_thread(writer.store.close)  # type: ignore[attr-defined]

    app = FastAPI(
        title="sbnn",
        summary="Uncertainty scoring with singular (low-rank) Bayesian neural networks.",
        description="Predictions with epistemic and aleatoric uncertainty, an OOD flag and an accept/refer decision. "
        "REST under /v1, the Open Inference Protocol (KServe v2) under /v2, Prometheus metrics at /metrics.",
        version=v2.server_metadata().version,
        lifespan=lifespan,
        **({"docs_url": None, "redoc_url": None, "openapi_url": None} if settings.docs is DocsAccess.OFF else {}),
    )
    openapi = app.openapi

    def openapi_with_inference_request() -> dict[str, Any]:
        if app.openapi_schema is None:
            openapi().setdefault("components", {}).setdefault("schemas", {}).update(v2.openapi_schemas())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi_with_inference_request  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = dataplane
    app.state.keys = keys  # a host's own gRPC front (Ray Serve's proxy) checks the same keys
    app.state.trail = trail
    _install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(kserve_v1.router)
    app.include_router(v2.router)
    app.include_router(repository_api.router)
    app.include_router(ops.router)
    # The last added runs first: CORS, HEAD as GET, latency, request id, the API key (before any body is read),
    # the audit trail, the body limit, then the body decoded.
    app.add_middleware(RequestBodyMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(AuditMiddleware, trail=trail)
    app.add_middleware(AuthMiddleware, keys=keys, docs=settings.docs)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(LatencyMiddleware, metrics=metrics, repository=repository)
    app.add_middleware(HeadMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["authorization", "content-type", "content-encoding", "x-request-id", HEADER.lower()],
            expose_headers=["x-request-id", HEADER.lower()],
        )
    return app


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory app.serve.app:app_from_env`` (settings from SBNN_* variables)."""
    return create_app()
