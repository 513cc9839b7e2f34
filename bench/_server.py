"""Starting `sbnn serve` for a benchmark: a free loopback port, wait until ready, always stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]
ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: subprocess.Popen, base: str, deadline: float, log: IO[str]) -> None:
    """Until ``base``'s /v2/health/ready is 200; RuntimeError with the log's tail if the server exits first or
    ``deadline`` (time.monotonic) passes."""
    while True:
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(f"server not ready (exit {server.poll()}): {log.read()[-3000:]}")
        time.sleep(0.2)


def machine_facts(load_average: tuple[float, float, float]) -> dict[str, object]:
    """What a result records of the machine: platform, cores, Python and torch, the load before and now."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in load_average],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass(frozen=True)
class Server:
    base: str
    pid: int
    grpc: str | None  # host:port when SBNN_GRPC_PORT was given, else None (gRPC off)


@contextmanager
def running_server(timeout: float = 60.0, port: int | None = None, **settings: str) -> Iterator[Server]:
    """`sbnn serve` on ``port`` (default: a free one) with SBNN_<KEY>=value for each setting (gRPC off unless
    ``grpc_port`` is one); raises with the server's log if it never gets ready."""
    port = port or free_port()
    env = {
        **os.environ,
        "SBNN_PORT": str(port),
        "SBNN_GRPC_PORT": "0",
        "SBNN_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **{f"SBNN_{key.upper()}": str(value) for key, value in settings.items()},
    }
    env.setdefault("SBNN_MODELS", str(ROOT / "models"))
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, base, time.monotonic() + timeout, log)
        grpc_port = int(env["SBNN_GRPC_PORT"])
        yield Server(base=base, pid=server.pid, grpc=f"127.0.0.1:{grpc_port}" if grpc_port else None)
    finally:
        server.terminate()
        server.wait(timeout=30)
