"""The child side of bench/serve_profile.py: the request path's targets, the timers wrapped around them, and
the server the child runs (as `sbnn serve` builds it). Its stamps are written on SIGUSR1."""

from __future__ import annotations

import collections
import functools
import importlib
import importlib.metadata
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
ROWS, SAMPLES = 1024, 512
# module | attribute | category ("group: detail"); {protocol} and {cycle} are the uvicorn classes in use. Not
# FastAPI.__call__: uvicorn calls the app with no arguments to detect a factory, and a wrapper accepts that.
FW = "framework: Starlette/FastAPI app, built-in middleware, routing, route handler"
TARGETS = [
    tuple(line.split(" | "))
    for line in f"""
{{protocol}} | data_received | HTTP parse: protocol data_received (parser, request task started)
{{cycle}} | run_asgi | uvicorn: request cycle run_asgi (+ unwrapped ASGI callees: proxy headers, FastAPI.__call__)
starlette.applications | Starlette.__call__ | {FW}
starlette.middleware.errors | ServerErrorMiddleware.__call__ | {FW}
starlette.middleware.exceptions | ExceptionMiddleware.__call__ | {FW}
fastapi.middleware.asyncexitstack | AsyncExitStackMiddleware.__call__ | {FW}
starlette.routing | Router.__call__ | {FW}
starlette.routing | Router.app | {FW}
fastapi.routing | APIRoute.handle | {FW}
fastapi.routing | solve_dependencies | framework: FastAPI solve_dependencies (own)
app.serve.middleware | HeadMiddleware.__call__ | middleware: HeadMiddleware
app.serve.middleware | LatencyMiddleware.__call__ | middleware: LatencyMiddleware
app.serve.middleware | RequestIdMiddleware.__call__ | middleware: RequestIdMiddleware
app.serve.auth | AuthMiddleware.__call__ | middleware: AuthMiddleware
app.serve.audit | AuditMiddleware.__call__ | middleware: AuditMiddleware
app.serve.middleware | BodyLimitMiddleware.__call__ | middleware: BodyLimitMiddleware
app.serve.middleware | RequestBodyMiddleware.__call__ | middleware: RequestBodyMiddleware
starlette.requests | Request.body | body decode: Request.body (gather the chunks)
{{cycle}} | receive | body decode: uvicorn receive
app.serve.api.strict_json | loads | body decode: strict_json.loads
fastapi.dependencies.utils | request_body_to_args | pydantic: request_body_to_args (PredictRequest)
fastapi.routing | run_endpoint_function | router: v1.predict (own)
app.serve.api.v1 | decode | router: v1.decode
app.serve.dataplane | DataPlane.infer | data plane: DataPlane.infer (own)
app.serve.api.v1 | _columns | validation: v1._columns (records -> columns)
app.serve.dataplane | DataPlane.plan | validation: DataPlane.plan (limits, plan, budget)
app.data.preprocess | Preprocessing.raw_values | validation: Preprocessing.raw_values
app.data.preprocess | Preprocessing.encode | preprocessing: Preprocessing.encode
app.gate.gate | Screening.screen | gate: Screening.screen
app.serve.batching | BatchingEngine.submit | queueing: submit -> compute thread starts
app.serve.batching | _compute | batching: compute-thread glue (_compute, _advance)
app.serve.batching | _advance | batching: compute-thread glue (_compute, _advance)
app.serve.backend_torch | TorchBackend.compute | backend: TorchBackend.compute/steps (own)
app.serve.backend_torch | TorchBackend.steps | backend: TorchBackend.compute/steps (own)
app.bnn.engine | MonteCarloEngine.steps | engine: MonteCarloEngine.steps
app.serve.backend_torch | summarise | decomposition: summarise (own)
app.serve.backend_torch | decompose | decomposition: decompose
app.serve.backend_torch | monte_carlo_error | decomposition: monte_carlo_error
app.gate.gate | Density.__call__ | gate: Density
app.gate.gate | Gate.decide | gate: Gate.decide
app.serve.dataplane | DataPlane._record | metrics: DataPlane._record (counters, audit note)
app.serve.drift | DriftMonitor.record | metrics: DriftMonitor.record
app.serve.api.v1 | encode | response: v1.encode (the body as plain data)
app.serve.api.v1 | json_response | response: v1.json_response (orjson)
fastapi.routing | serialize_response | response: FastAPI serialize_response (validate, dump_json)
starlette.responses | Response.__init__ | response: Response init
starlette.responses | Response.__call__ | response: ASGI send chain (middleware send wrappers)
{{cycle}} | send | HTTP write: uvicorn send (headers, body: a transport.write each)
""".strip().splitlines()
]
QUEUE = next(category for _, attribute, category in TARGETS if attribute == "BatchingEngine.submit")
GAPS, HANDOFF = "thread hand-off: between pieces", "thread hand-off: compute ends -> coroutine resumes"
SPECIAL = ("data_received", "run_asgi", "BatchingEngine.submit", "_compute", "_advance")

# -- the probe (child side) ------------------------------------------------------------------------------
_lock, _local = threading.Lock(), threading.local()
_totals: dict[str, float] = collections.defaultdict(float)  # category -> exclusive seconds
_entries: dict[str, int] = collections.defaultdict(int)  # category -> timed calls or steps
_server: list[float] = []  # per request: first byte -> its task ends
_spans: list[tuple[float, float]] = []  # compute-thread runs of the current submit
_starts: dict[int, float] = {}  # id(transport) -> the current request's first byte
_kinds: dict[str, str] = {}


def _enter(category: str | None) -> None:
    _local.__dict__.setdefault("stack", []).append([category, time.perf_counter(), 0.0])


def _leave() -> None:
    now, stack = time.perf_counter(), _local.stack
    category, start, inner = stack.pop()
    if stack:
        stack[-1][2] += now - start
    if category is not None:
        with _lock:
            _totals[category] += now - start - inner
            _entries[category] += 1


@types.coroutine  # awaitable as it is, and a generator for `yield from`
def _stepped(inner: Any, category: str | None) -> Any:
    """Drive ``inner`` (a coroutine or generator) step by step, timing each; yields what it yields."""
    value, error = None, None
    while True:
        _enter(category)
        try:
            out = inner.send(value) if error is None else inner.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            _leave()
        try:
            value, error = (yield out), None
        except BaseException as exc:  # cancellation, GeneratorExit: passed on to the inner one
            value, error = None, exc


def wrap(fn: Callable, category: str | None) -> Callable:
    if inspect.iscoroutinefunction(fn):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            return await _stepped(fn(*args, **kwargs), category)

        return functools.wraps(fn)(timed_async)
    if inspect.isgeneratorfunction(fn):

        def timed_generator(*args: Any, **kwargs: Any) -> Any:
            return (yield from _stepped(fn(*args, **kwargs), category))

        return functools.wraps(fn)(timed_generator)

    def timed(*args: Any, **kwargs: Any) -> Any:
        _enter(category)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave()

    return functools.wraps(fn)(timed)


def _special(attribute: str, fn: Callable, category: str) -> Callable:
    """Timers that also stamp a request's first byte and end, a submit's intervals, the compute thread's runs."""
    timed = wrap(fn, category)

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "cycle", None) is None or self.cycle.response_complete:  # a new request's first bytes
            _starts[id(self.transport)] = time.perf_counter()
        timed(self, data)

    async def run_asgi(self: Any, app: Any) -> None:
        start = _starts.get(id(self.transport), time.perf_counter())
        try:
            await _stepped(fn(self, app), category)
        finally:
            with _lock:
                _server.append(time.perf_counter() - start)

    async def submit(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        with _lock:
            _spans.clear()
        try:  # its own steps lie within queueing and hand-off: a frame without a category of its own
            return await _stepped(fn(*args, **kwargs), None)
        finally:
            end, spans = time.perf_counter(), list(_spans)
            with _lock:
                if spans:
                    _totals[QUEUE] += spans[0][0] - start
                    _totals[GAPS] += spans[-1][1] - spans[0][0] - sum(b - a for a, b in spans)
                    _totals[HANDOFF] += end - spans[-1][1]

    def on_compute_thread(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return timed(*args, **kwargs)
        finally:
            with _lock:
                _spans.append((start, time.perf_counter()))

    chosen = {"data_received": data_received, "run_asgi": run_asgi, "BatchingEngine.submit": submit}
    return functools.wraps(fn)(chosen.get(attribute, on_compute_thread))


def install(protocol: type) -> list[str]:
    """Wrap every target where it is defined; returns the targets not found (skipped)."""
    owner = next(c for c in protocol.__mro__ if "data_received" in c.__dict__)
    uvicorn_module = next(c.__module__ for c in protocol.__mro__ if c.__module__.startswith("uvicorn.protocols"))
    classes = {"{protocol}": owner, "{cycle}": sys.modules[uvicorn_module].RequestResponseCycle}
    skipped = []
    for module, attribute, category in TARGETS:
        try:
            holder: Any = classes.get(module) or importlib.import_module(module)
            *path, name = attribute.split(".")
            for part in path:
                holder = getattr(holder, part)
            fn = vars(holder)[name]
        except (ImportError, AttributeError, KeyError):
            skipped.append(f"{module}.{attribute}")
            continue
        setattr(holder, name, _special(attribute, fn, category) if attribute in SPECIAL else wrap(fn, category))
        _kinds[category] = "async" if inspect.iscoroutinefunction(fn) else "sync"
    return skipped


def _dump(path: Path, info: dict[str, Any]) -> None:
    with _lock:
        data = {"totals": dict(_totals), "entries": dict(_entries), "server_s": list(_server), **info}
        _totals.clear(), _entries.clear(), _server.clear()
    Path(f"{path}.tmp").write_text(json.dumps(data))
    os.replace(f"{path}.tmp", path)


def child(port: int, stats: Path) -> None:
    import uvicorn

    from app.serve.app import create_app
    from app.serve.http_protocol import GracefulServer, protocol_with_timeouts
    from app.serve.serve_command import log_config
    from app.serve.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "models" / MODEL, Path(tmp) / "models" / MODEL)
        s = Settings(models=Path(tmp) / "models", device="cpu", grpc_port=0, max_rows=ROWS, log_level="warning")
        protocol = protocol_with_timeouts(s.header_timeout_s, s.body_timeout_s)
        info = {"skipped": install(protocol), "protocol": protocol.__mro__[1].__name__, "kinds": _kinds}
        config = uvicorn.Config(  # as app.serve.serve_command.serve builds it
            create_app(s), host="127.0.0.1", port=port, log_level=s.log_level, workers=1, server_header=False,
            http=protocol, timeout_graceful_shutdown=s.shutdown_timeout_s, log_config=log_config(s.log_level),
            access_log=False,
        )  # fmt: skip
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=_dump, args=(stats, info)).start())
        GracefulServer(config).run()
