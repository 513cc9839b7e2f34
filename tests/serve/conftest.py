"""Fixtures of the service tests: one model repository, an in-process ASGI client and a real uvicorn server.

The repository holds the bundled flchain model, the tiny session checkpoint ("tiny") and a copy of it whose
weights have one flipped byte ("broken"), so every server shows a failed model next to ready ones.
Async tests run on AnyIO's pytest plugin (shipped with anyio) on the asyncio backend; the ASGI app lives for
the whole session on that one event loop, so its batching tasks and metrics persist between tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.serve.app import create_app
from app.serve.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "flchain-mortality"
READY_TIMEOUT_S = 60.0
FLCHAIN_ROW: dict[str, Any] = {
    "age": 62,
    "sex": "F",
    "kappa": 1.2,
    "lambda": 1.5,
    "flc_grp": 5,
    "creatinine": 1.0,
    "mgus": 0,
}
CATEGORICAL = {"sex"}  # flchain's one categorical feature

# The limits of every server under test (the ASGI app and the uvicorn process).
LIMITS: dict[str, int | str] = {
    # The repository holds a broken model beside the ready ones: ready once every folder was tried and one serves.
    "ready_when": "any",
    "drift_min_rows": 20,
    "drift_window": 200,
    "max_rows": 64,
    "max_samples": 2048,
    "max_body_bytes": 65536,
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Session scope, so the session-scoped async fixtures share the tests' event loop."""
    return "asyncio"


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """flchain-mortality (ready), tiny (ready) and broken (weights modified after hashing: fails sha256)."""
    root = tmp_path_factory.mktemp("serve-models")
    shutil.copytree(BUNDLED, root / "flchain-mortality")
    shutil.copytree(tiny_checkpoint, root / "tiny")
    broken = root / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["name"] = "broken"  # the folder name; the flipped byte is then the only defect
    (broken / "manifest.json").write_text(json.dumps(manifest, indent=2))
    weights = broken / manifest["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return root


@pytest.fixture(scope="session")
def serve_settings(model_repository: Path) -> Settings:
    return Settings(models=model_repository, device="cpu", **LIMITS)


async def _wait_ready(client: httpx.AsyncClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (await client.get("/v2/health/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass  # the real server is not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"/v2/health/ready did not turn 200 within {timeout_s} s")
        await anyio.sleep(0.05)


@asynccontextmanager
async def in_process(settings: Settings, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on a new in-process app for ``settings``, inside its lifespan, once it is ready (with
    ``ready=False``: once its start-up load is done, ready or not); ``client.app`` is the app."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sbnn.test", timeout=30.0) as client:
            client.app = app  # type: ignore[attr-defined]
            if ready:
                await _wait_ready(client)
            else:
                await anyio.to_thread.run_sync(app.state.dataplane.repository.loaded.wait, READY_TIMEOUT_S)
            yield client


@pytest.fixture(scope="session")
async def asgi_client(serve_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the in-process app, inside its lifespan, once every model folder was tried."""
    async with in_process(serve_settings) as client:
        yield client


@pytest.fixture(scope="session")
def app_client() -> Callable[[Settings], Any]:
    """``async with app_client(settings) as client``: a separate in-process app with other settings."""
    return in_process


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a free loopback TCP port."""
    return _free_loopback_port


@contextmanager
def _compute_held(engine: Any) -> Iterator[threading.Event]:
    """The batching engine's single compute thread held by a task until the event is set (or the block ends):
    every pass waits behind it."""
    release = threading.Event()
    engine.executor.submit(release.wait, 30)
    try:
        yield release
    finally:
        release.set()


@pytest.fixture(scope="session")
def hold_compute() -> Callable[[Any], Any]:
    """``with hold_compute(engine) as release:``: the compute thread held until ``release.set()`` or the end."""
    return _compute_held


def wait_until_ready(
    process: subprocess.Popen[bytes], base_url: str, log_path: Path, ready: Callable[[], bool] = lambda: True
) -> None:
    """Until the server at ``base_url`` answers /v2/health/ready 200 and ``ready()`` holds; the test fails with
    its log if the process exits first or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode} during startup:\n{log_path.read_text()}")
        try:
            up = httpx.get(f"{base_url}/v2/health/ready", timeout=2.0).status_code == 200
        except httpx.TransportError:
            up = False
        if up and ready():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the server was not ready within {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
        time.sleep(0.1)


@contextmanager
def running_uvicorn(
    model_repository: Path,
    log_dir: Path,
    ready: Callable[[], bool] = lambda: True,
    cli: bool = False,
    **settings: str,
) -> Iterator[str]:
    """A real uvicorn process serving ``model_repository`` on a free loopback port with LIMITS and SBNN_<KEY>
    ``settings`` (gRPC off unless one turns it on); yields its base URL once /v2/health/ready is 200 and
    ``ready()`` holds; stopped by SIGTERM. Started by the uvicorn command line, or with ``cli`` by `sbnn serve`
    (whose httptools protocol has the header and body read deadlines); its log is ``log_dir / "stderr.log"``."""
    port = _free_loopback_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBNN_")}
    env.update(
        {
            "SBNN_MODELS": str(model_repository),
            "SBNN_DEVICE": "cpu",
            "SBNN_BATCH_MAX_WAIT_MS": "5",
            "SBNN_GRPC_PORT": "0",
            **{f"SBNN_{key.upper()}": str(value) for key, value in LIMITS.items()},
            **{f"SBNN_{key.upper()}": value for key, value in settings.items()},
        }
    )
    log_path = log_dir / "stderr.log"
    if cli:
        env["SBNN_LOG_LEVEL"] = "warning"
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", "app.serve.app:app_from_env"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-server-header"]
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(process, base_url, log_path, ready)
        yield base_url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="session")
def start_uvicorn() -> Callable[..., Any]:
    """``running_uvicorn`` for tests that start a server of their own (other settings, gRPC on)."""
    return running_uvicorn


@pytest.fixture(scope="session")
def live_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn process serving the repository on a free loopback port; yields its base URL."""
    with running_uvicorn(model_repository, tmp_path_factory.mktemp("uvicorn")) as base_url:
        yield base_url


class Metrics:
    """Samples of one Prometheus text exposition, looked up by name and (a subset of) labels."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (found, value)
            for sample, found, value in self.samples
            if sample == name and all(found.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum over matching samples; None when no sample matches."""
        matches = self.find(name, **labels)
        return sum(value for _, value in matches) if matches else None

    def count(self, name: str, **labels: str) -> float:
        """Like ``value`` but 0 for a series not created yet (a counter before its first increment)."""
        return self.value(name, **labels) or 0.0


@pytest.fixture(scope="session")
def parse_metrics() -> Callable[[str], Metrics]:
    return Metrics


@pytest.fixture
def flchain_row() -> dict[str, Any]:
    """A valid, in-distribution flchain record (a fresh copy per test)."""
    return dict(FLCHAIN_ROW)


def v2_inputs(rows: list[dict[str, Any]], datatypes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Records -> one OIP tensor of shape [N] per feature (FP64 numbers, BYTES categories unless told)."""
    datatypes = datatypes or {}
    return [
        {
            "name": name,
            "shape": [len(rows)],
            "datatype": datatypes.get(name, "BYTES" if name in CATEGORICAL else "FP64"),
            "data": [row[name] for row in rows],
        }
        for name in rows[0]
    ]


@pytest.fixture(scope="session")
def to_v2() -> Callable[..., list[dict[str, Any]]]:
    return v2_inputs


def assert_valid_prediction_response(body: dict[str, Any], rows: int, manifest: dict[str, Any], weights: Path) -> None:
    """Every invariant of a /v1 answer for ``rows`` rows of the model described by ``manifest``, its shape the
    documented one (``PredictResponse``, strict: no field missing, none extra)."""
    from app.serve.api.schemas_v1 import PredictResponse

    PredictResponse.model_validate(body)
    labels = manifest["task"]["labels"]
    gate = manifest["gate"]
    assert body["model"]["name"] == manifest["name"]
    assert body["model"]["version"] == manifest["version"]
    assert body["model"]["sha256"] == manifest["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert len(body["predictions"]) == rows
    if any(p["decision"] != "reject" for p in body["predictions"]):
        assert isinstance(body["seed"], int) and not isinstance(body["seed"], bool)
    for prediction in body["predictions"]:
        components = prediction["gate"]
        if prediction["decision"] == "reject":
            assert prediction["label"] is None and prediction["probabilities"] is None
            assert prediction["uncertainty"] is None
            assert prediction["reasons"] and all(r.startswith("bounds:") for r in prediction["reasons"])
            assert components["density"]["score"] is None and components["epistemic"]["score"] is None
            assert len(prediction["details"]) == len(prediction["reasons"])
            continue
        probabilities = prediction["probabilities"]
        assert list(probabilities) == labels
        assert prediction["label"] in labels
        assert prediction["label"] == max(probabilities, key=probabilities.__getitem__)
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert math.fsum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        u = prediction["uncertainty"]
        assert u["epistemic"] >= 0.0 and u["aleatoric"] >= 0.0 and u["std"] >= 0.0
        assert u["total"] == pytest.approx(u["aleatoric"] + u["epistemic"], abs=1e-6)
        assert components["epistemic"]["score"] == u["epistemic"]
        for name in ("density", "epistemic"):
            component = components[name]
            assert component["threshold"] == gate[name]["threshold"]
            assert component["flag"] is (component["score"] > component["threshold"])
            assert 0.0 <= component["percentile"] <= 100.0
            assert (name in prediction["reasons"]) is component["flag"]
        support = components["support"]
        assert support["flag"] is any(r.startswith("support:") for r in prediction["reasons"])
        assert support["score"] >= 0.0 and (support["score"] == 0.0 or support["flag"])
        referred = support["flag"] or components["density"]["flag"] or components["epistemic"]["flag"]
        assert prediction["decision"] == ("refer" if referred else "accept")
        assert len(prediction["details"]) == len(prediction["reasons"])


@pytest.fixture(scope="session")
def check_prediction() -> Callable[[dict[str, Any], int, dict[str, Any], Path], None]:
    return assert_valid_prediction_response


def grpc_infer_request(model: str, row: dict[str, Any]) -> Any:
    """A one-row ModelInferRequest in typed contents (FP64 numbers, BYTES for the categorical features)."""
    from app.serve.grpc import open_inference_grpc_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for name, value in row.items():
        tensor = request.inputs.add(name=name, shape=[1], datatype="BYTES" if name in CATEGORICAL else "FP64")
        if name in CATEGORICAL:
            tensor.contents.bytes_contents.append(str(value).encode())
        else:
            tensor.contents.fp64_contents.append(float(value))
    return request


@pytest.fixture(scope="session")
def one_row_grpc() -> Callable[[str, dict[str, Any]], Any]:
    """``one_row_grpc(model, row)``: a one-row gRPC ModelInferRequest."""
    return grpc_infer_request


SEQUENCE_REGRESSION, SEQUENCE_CLASSIFIER = "seq-reg", "seq-cls"
SEQUENCE_UNIT = "mmol/L"


@pytest.fixture(scope="session")
def sequence_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository of two tiny sequence models only: a regression LSTM (target in SEQUENCE_UNIT) and a
    classifier, trained for 2 epochs on synthetic visits (lab numeric in [0, 50], ward categorical)."""
    pytest.importorskip("pandas")
    import dataclasses

    from sequence_tables import write_visits

    from app.data.schema import PlausibleRange
    from app.data.sequence_table import load_sequence_table
    from app.train.config import TrainConfig
    from app.train.sequence_pipeline import train_sequence_checkpoint

    work = tmp_path_factory.mktemp("sequence-train")
    root = tmp_path_factory.mktemp("sequence-models")
    for name, continuous in ((SEQUENCE_REGRESSION, True), (SEQUENCE_CLASSIFIER, False)):
        dataset = load_sequence_table(
            write_visits(work / f"{name}.csv", continuous), "y", "patient", "day", features=["lab", "ward"],
            plausible={"lab": PlausibleRange(low=0.0, high=50.0)},
        )  # fmt: skip
        if continuous:
            dataset = dataclasses.replace(dataset, target_unit=SEQUENCE_UNIT)
        config = TrainConfig(
            hidden=[8], rank=3, epochs=2, kl_warmup_epochs=1, default_samples=16, val_samples=4, batch_size=32,
            device="cpu",
        )  # fmt: skip
        train_sequence_checkpoint(dataset, config, work / name)
        shutil.copytree(work / name, root / name)
    return root
