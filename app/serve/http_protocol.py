"""uvicorn's httptools protocol with read deadlines, so a slow client (slowloris) cannot hold a connection forever.

uvicorn waits without limit for a request's headers and body; each stalled connection costs a socket and memory.
Two deadlines bound that, per request:

- headers: from the connection's first moment, or the first byte of a later request, all headers within
  ``header_timeout_s``, else the connection is closed (nothing was parsed to answer). Between requests an idle
  keep-alive connection is uvicorn's own ``timeout_keep_alive``, untouched: this timer is not running then.
- body: the whole body within ``body_timeout_s`` of the headers, else a 408 in the surface's error shape when no
  response was started (the app then sees ``http.disconnect``), and the connection is closed either way.

httptools (llhttp, in C) parses where uvicorn's pure-Python h11 would cost a large share of a one-row
request. ``GracefulServer`` is uvicorn's server whose handled SIGTERM/SIGINT ends the process with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("sbnn.serve.http")


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a stop signal it has handled (drained, then shut down) exits with status 0:
    stock uvicorn re-raises the signal afterwards, so the process dies of it (143) and looks like a crash."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # handled: nothing left to re-raise


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header and a body deadline; ``protocol_with_timeouts`` sets them."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    # uvicorn builds the protocol with its own keyword arguments, so the limits are class attributes.
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _expired: Scope | None = None  # the request answered 408 here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inner_app, self.app = self.app, self._run_app

    async def _run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner_app(scope, receive, send)
        except ClientDisconnect:
            # The app's view of the 408 (already logged once): without this, a traceback per stalled request.
            if scope is not self._expired:
                raise

    # The parser's callbacks say where the client is: a fresh connection owes its first request's headers; the
    # first byte of a later request (httptools calls on_message_begin) owes the rest of its headers; once they
    # are in, the body is owed. Between requests an idle keep-alive connection is uvicorn's own
    # ``timeout_keep_alive``, untouched: no timer of these runs then.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header()

    def on_headers_complete(self) -> None:
        self._cancel_header()
        super().on_headers_complete()
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_expired)

    def on_message_complete(self) -> None:
        self._cancel_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header()
        self._cancel_body()
        super().connection_lost(exc)

    def _arm_header(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_expired)

    def _cancel_header(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_expired(self) -> None:
        self._header_timer = None
        if self.transport.get_protocol() is self and not self.transport.is_closing():
            logger.info("request headers not received within %s s: connection closed", self.header_timeout_s)
            self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.get_protocol() is not self or self.transport.is_closing():
            return
        logger.info("request body not received within %s s: 408, connection closed", self.body_timeout_s)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app, still waiting for the body, gets http.disconnect and its own answer is dropped.
            cycle.response_started = cycle.disconnected = True
            self._expired = self.scope
            cycle.message_event.set()
            self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        """The 408 in each surface's shape (as ``middleware.error_response``): {"error"} on /v2, else {"detail"}."""
        key = "error" if self.scope["path"].startswith("/v2") else "detail"
        body = json.dumps({key: f"request body not received within {self.body_timeout_s:g} s"}).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return b"HTTP/1.1 408 Request Timeout\r\n" + head + b"\r\n" + body


def protocol_with_timeouts(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """A ``DeadlineHttpToolsProtocol`` subclass with these limits, for ``uvicorn.Config(..., http=...)``."""
    attributes = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
    return type("DeadlineHttpToolsProtocol", (DeadlineHttpToolsProtocol,), attributes)
