"""``sbnn serve``: run the service under uvicorn, and stop it cleanly.

SIGTERM or SIGINT stops new connections, lets requests in flight finish for ``shutdown_timeout_s``, cancels
what is left, runs the lifespan's shutdown (gRPC drains, the loader finishes) and exits 0: a stop that was
asked for is not a failure. Stock uvicorn re-raises the signal once it has shut down, so the process dies of
it (status 143 for SIGTERM) and orchestrators log a crash.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_options import exit_missing_extra, fail


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the service's own loggers (``sbnn.*``: a line per model loaded and the summary,
    reloads, the access log) on the same handler and at the same level."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["sbnn"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def serve(
    models: Annotated[
        Path | None, typer.Option(help="Model repository folder (env SBNN_MODELS, default models).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (env SBNN_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SBNN_PORT, default 8000).")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (env SBNN_GRPC_PORT, default 8081; 0 turns gRPC off).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (env SBNN_DEVICE, default auto).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="torch, onnx (exported bank, no torch) or auto (env SBNN_BACKEND).")
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="API keys file (env SBNN_API_KEYS_FILE; `sbnn keys new` writes one).")
    ] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="Serve a non-loopback --host with no API key: anyone who can reach it may call.")
    ] = False,
    watch: Annotated[
        bool, typer.Option(help="Reload a model when files under its folder change (env SBNN_WATCH).")
    ] = False,
    tmp_dir: Annotated[
        Path | None,
        typer.Option(help="Writable folder for temporary files and caches (env SBNN_TMP_DIR; read-only roots)."),
    ] = None,
) -> None:
    """Serve every checkpoint under the model folder: REST /v1, Open Inference Protocol /v2 and gRPC, /metrics."""
    import uvicorn
    from pydantic import ValidationError

    from app.serve.app import create_app
    from app.serve.http_protocol import GracefulServer, protocol_with_timeouts
    from app.serve.settings import Settings

    given = {"models": models, "host": host, "port": port, "device": device, "backend": backend}
    given |= {"api_keys_file": api_keys_file, "allow_unauthenticated": allow_unauthenticated}
    given |= {"watch": watch, "tmp_dir": tmp_dir}
    overrides: dict[str, object] = {k: v for k, v in given.items() if v}
    if grpc_port is not None:  # 0 is a value here: gRPC off
        overrides["grpc_port"] = grpc_port
    try:
        settings = Settings(**overrides)
        application = create_app(settings)
    except (ValidationError, ValueError) as exc:
        fail(exc)
    except ImportError as exc:  # --backend onnx without the onnx extra
        exit_missing_extra("serve", exc, [])
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,  # one process: metrics and drift windows live in it (see docs/serving.md)
        server_header=False,  # no "server: uvicorn": what runs here is nobody else's business
        # httptools with header and body read deadlines: a slow client cannot hold a connection open forever;
        # the event loop is uvloop (uvicorn's "auto" picks it when installed, as it is with sbnn).
        http=protocol_with_timeouts(settings.header_timeout_s, settings.body_timeout_s),
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_config=log_config(settings.log_level),
        access_log=False,  # sbnn.serve.access has a line per request: the route, status, key id and request id
    )
    server = GracefulServer(config)
    server.run()
    if not server.started:  # the port was taken, or the lifespan failed: uvicorn has logged why
        raise typer.Exit(3)
