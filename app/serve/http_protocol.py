"""uvicorn's h11 protocol with read deadlines, so a slow client (slowloris) cannot hold a connection forever.

uvicorn waits without limit for a request's headers and body; each stalled connection costs a socket and memory.
Two deadlines bound that, per request:

- headers: from the connection's first moment, or the first byte of a later request, all headers within
  ``header_timeout_s``, else the connection is closed (nothing was parsed to answer). Between requests an idle
  keep-alive connection is uvicorn's own ``timeout_keep_alive``, untouched: this timer is not running then.
- body: the whole body within ``body_timeout_s`` of the headers, else a 408 in the surface's error shape when no
  response was started (the app then sees ``http.disconnect``), and the connection is closed either way.

``GracefulServer`` is uvicorn's server whose handled SIGTERM/SIGINT ends the process with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("sbnn.serve.http")


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a stop signal it has handled (drained, then shut down) exits with status 0:
    stock uvicorn re-raises the signal afterwards, so the process dies of it (143) and looks like a crash."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # handled: nothing left to re-raise


class DeadlineH11Protocol(H11Protocol):
    """``H11Protocol`` with a header and a body deadline; ``protocol_with_timeouts`` sets the two limits."""

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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sync_timers()  # a fresh connection owes its first request's headers

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # cancels uvicorn's keep-alive timer, parses what it can
        self._sync_timers()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms keep-alive; may parse a pipelined request
        self._sync_timers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header()
        self._cancel_body()
        super().connection_lost(exc)

    def _sync_timers(self) -> None:
        """Arm or cancel each timer from h11's view of the client: IDLE is awaiting headers, SEND_BODY a body."""
        state = self.conn.their_state
        if state is h11.IDLE and (self.conn.trailing_data[0] or self.timeout_keep_alive_task is None):
            # Part of a request has arrived, or none was ever answered here: the headers are owed.
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_expired)
        else:
            self._cancel_header()  # parsed, or an idle keep-alive connection (uvicorn's timer governs it)
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_expired)
        else:
            self._cancel_body()

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
        if cycle is not None and not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE:
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
        response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
        return b"".join(self.conn.send(event) or b"" for event in (response, h11.Data(data=body), h11.EndOfMessage()))


def protocol_with_timeouts(header_timeout_s: float, body_timeout_s: float) -> type[H11Protocol]:
    """A ``DeadlineH11Protocol`` subclass with these limits, for ``uvicorn.run(..., http=...)``."""
    attributes = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), attributes)
