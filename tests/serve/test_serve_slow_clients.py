"""Slow clients (slowloris) against a real ``sbnn serve``: the header and body read deadlines of
app/serve/http_protocol.py, over raw loopback sockets.

The server is started through the CLI (conftest's ``running_uvicorn`` with ``cli``: the uvicorn command line
would not install the protocol ``sbnn serve`` does), with 1 s deadlines. Timing asserts are generous: a 2-core CI
machine can be slow, and what matters is that a stalled client is cut off, not to the millisecond.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "flchain-mortality"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
SLACK_S = 4.0  # on top of a deadline, before a test calls the server stuck
READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_repository: Path, start_uvicorn: Callable[..., Any]
) -> Iterator[tuple[int, Path]]:
    """``sbnn serve`` on a free loopback port with 1 s header and body deadlines; yields (port, its log)."""
    logs = tmp_path_factory.mktemp("slow-clients")
    timeouts = {"header_timeout_s": str(HEADER_TIMEOUT_S), "body_timeout_s": str(BODY_TIMEOUT_S)}
    with start_uvicorn(model_repository, logs, cli=True, **timeouts) as base:
        yield int(base.rsplit(":", 1)[1]), logs / "stderr.log"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT_S + BODY_TIMEOUT_S + SLACK_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece leaves when sent
    return sock


def _read_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout when it keeps the connection past the slack."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length: (status, lower-case headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _predict_body(row: dict[str, Any]) -> bytes:
    return json.dumps({"instances": [row], "samples": 32, "seed": 1}).encode()


@pytest.mark.parametrize(
    "sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */"], ids=["nothing", "half-headers"]
)
def test_headers_not_received_in_time_close_the_connection(server: tuple[int, Path], sent: bytes) -> None:
    port, _ = server
    with _connect(port) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        received = _read_until_eof(sock)
        elapsed = time.monotonic() - started
    assert received == b""  # nothing was parsed to answer: closed, no response
    assert HEADER_TIMEOUT_S * 0.5 <= elapsed < HEADER_TIMEOUT_S + SLACK_S


def test_a_stalled_pipelined_request_is_cut_off_after_the_first_is_answered(server: tuple[int, Path]) -> None:
    """The header deadline also covers a request that began behind another on the same connection."""
    port, _ = server
    with _connect(port) as sock:
        sock.sendall(_request("GET", "/v2/health/live") + b"GET /v2/health/live HTTP/1.1\r\nHost: 1")
        status, _, _ = _read_response(sock)
        started = time.monotonic()
        rest = _read_until_eof(sock)
        elapsed = time.monotonic() - started
    assert status == 200
    assert rest == b""
    assert elapsed < HEADER_TIMEOUT_S + SLACK_S


@pytest.mark.parametrize(
    ("path", "key"), [(f"/v1/models/{MODEL}/predict", "detail"), (f"/v2/models/{MODEL}/infer", "error")]
)
def test_body_not_received_in_time_is_a_408_then_closed(server: tuple[int, Path], path: str, key: str) -> None:
    port, log_path = server
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with _connect(port) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + b'{"instance')  # 10 of the 100 body bytes, then a stall
        status, headers, body = _read_response(sock)
        rest = _read_until_eof(sock)
        elapsed = time.monotonic() - started
    assert status == 408
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert set(json.loads(body)) == {key}
    assert rest == b""  # then EOF
    assert BODY_TIMEOUT_S * 0.5 <= elapsed < BODY_TIMEOUT_S + SLACK_S
    assert "Exception in ASGI application" not in log_path.read_text()  # the app saw a disconnect, not a crash


def test_keep_alive_outlives_the_header_deadline(server: tuple[int, Path], flchain_row: dict[str, Any]) -> None:
    """Idle between requests is uvicorn's keep-alive (5 s), not the 1 s header deadline."""
    port, _ = server
    with _connect(port) as sock:
        sock.sendall(_request("POST", f"/v1/models/{MODEL}/predict", _predict_body(flchain_row)))
        status, _, body = _read_response(sock)
        assert status == 200
        assert len(json.loads(body)["predictions"]) == 1
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # past the header deadline, within keep-alive
        sock.sendall(_request("GET", "/v2/health/live"))
        status, _, _ = _read_response(sock)
        assert status == 200


def test_slow_but_steady_client_is_served(server: tuple[int, Path], flchain_row: dict[str, Any]) -> None:
    port, _ = server
    request = _request("POST", f"/v1/models/{MODEL}/predict", _predict_body(flchain_row))
    head, _, body = request.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    third = len(head) // 3
    pieces = [head[:third], head[third : 2 * third], head[2 * third :], body[: len(body) // 2], body[len(body) // 2 :]]
    with _connect(port) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.1)
        status, _, answer = _read_response(sock)
    assert status == 200
    assert len(json.loads(answer)["predictions"]) == 1
