"""ASGI middleware that lets standard protocol clients in unchanged (docs/api.md, "Compatibility").

- ``RequestBodyMiddleware``: gzip and deflate request bodies inflated, never beyond the body limit (a larger
  result is a 413, so a small bomb is refused, not inflated).
- ``RequestIdMiddleware``: ``X-Request-Id`` echoed (one generated when absent or unusable); one log line per
  request with the id, the API key's id and the W3C ``traceparent``, never a request value.
- ``HeadMiddleware``: HEAD answered as GET is, with the same status and headers and no body.
- ``BodyLimitMiddleware``: bodies over the limit refused with 413, by Content-Length or while streaming.
- ``LatencyMiddleware``: every request's duration observed by model, route template and status.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.serve.metrics import ServiceMetrics
from app.serve.repository import ModelRepository

access_log = logging.getLogger("sbnn.serve.access")

ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")  # what is safe to echo and to log
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def choose_request_id(given: str | None) -> str:
    """The request id to answer and log: the client's when it is a safe token, else a new one."""
    return given if given is not None and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _set_header(scope: Scope, name: bytes, value: bytes | None) -> None:
    """Replace (or, with None, drop) one request header, in place: the outer middleware reads the same scope."""
    headers = [(k, v) for k, v in scope["headers"] if k != name]
    scope["headers"] = headers if value is None else [*headers, (name, value)]


async def error_response(
    scope: Scope, send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """An error in each surface's shape: {"error": …} on /v2, {"detail": …} elsewhere."""
    key = "error" if scope["path"].startswith("/v2") else "detail"
    body = json.dumps({key: message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` inflated (gzip members one after another, zlib or raw deflate); _TooLarge past ``limit`` bytes
    of output, which is never exceeded by more than one byte; zlib.error when the data is corrupt or cut off."""
    if not data:
        return b""
    if wbits == zlib.MAX_WBITS and (len(data) < 2 or (data[0] & 0x0F) != 8 or int.from_bytes(data[:2], "big") % 31):
        wbits = -zlib.MAX_WBITS  # "deflate" sent without its zlib header, as some clients do
    out = bytearray()
    pending = data
    while True:
        inflater = zlib.decompressobj(wbits)
        while pending:
            out += inflater.decompress(pending, limit + 1 - len(out))
            if len(out) > limit:
                raise _TooLarge
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        if not inflater.eof:
            raise zlib.error("the compressed data ends early")
        pending = inflater.unused_data
        if not pending or wbits != ENCODINGS["gzip"]:
            if pending:
                raise zlib.error("data after the end of the compressed stream")
            return bytes(out)


class RequestBodyMiddleware:
    """Inflate gzip/deflate bodies within ``limit`` bytes (413 past it, 400 naming the body when corrupt, 415
    for another encoding).

    Sits inside the body-limit middleware, which bounds the compressed bytes read here."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = (_header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding == "identity":
            await self.app(scope, receive, send)
            return
        if encoding not in ENCODINGS:
            accept = [(b"accept-encoding", b"gzip, deflate")]
            await error_response(
                scope, send, 415, f"unsupported Content-Encoding {encoding!r}; use gzip or deflate", accept
            )
            return
        chunks = []
        while True:
            message = await receive()  # the body-limit middleware's receive: the compressed bytes stay bounded
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            body = inflate(b"".join(chunks), ENCODINGS[encoding], self.limit)
        except _TooLarge:
            await error_response(scope, send, 413, f"request body over the {self.limit}-byte limit once inflated", [])
            return
        except zlib.error as exc:
            await error_response(scope, send, 400, f"body: not valid {encoding} data ({exc})", [])
            return
        _set_header(scope, b"content-encoding", None)
        _set_header(scope, b"content-length", str(len(body)).encode())
        delivered = False

        async def inflated() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # http.disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, inflated, send)


class RequestIdMiddleware:
    """Echo ``X-Request-Id`` (a new one when absent or not a safe token) and log each request's method, route
    template, status, duration, id and ``traceparent`` (only when well formed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id  # for the audit trail
        traceparent = _header(scope, b"traceparent")
        traceparent = traceparent if traceparent is not None and TRACEPARENT.fullmatch(traceparent) else None
        started, status = time.perf_counter(), 500

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            access_log.info(
                "%s %s %d %.1f ms key_id=%s request_id=%s traceparent=%s",
                scope["method"],
                getattr(scope.get("route"), "path", "unmatched"),  # the template: no value from the request
                status,
                1000 * (time.perf_counter() - started),
                scope.get("state", {}).get("key_id", "-"),  # the API key's id (app.serve.auth), never the key
                request_id,
                traceparent or "-",
            )


class HeadMiddleware:
    """HEAD runs the GET route on a copy of the scope (the server still knows the request was HEAD) and sends
    the status and headers, Content-Length included, without the body. Outermost, so metrics see the route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def bodiless(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, bodiless)


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and (len(length) > 18 or int(length) > self.limit):
            await self._reject(scope, send)
            return
        seen = 0
        started = False
        too_large = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to a body it could not read (FastAPI turns the error into a 400)
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            pass
        if too_large and not started:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await error_response(scope, send, 413, f"request body over the {self.limit}-byte limit", [])


class _BodyTooLarge(Exception):
    pass


class LatencyMiddleware:
    """Observe every request's duration by model, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, repository: ModelRepository) -> None:
        self.app = app
        self.metrics = metrics
        self.repository = repository

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            name = scope.get("path_params", {}).get("name", "")
            model = name if name in self.repository.names() else ("unknown" if name else "")
            self.metrics.request_duration.labels(model, route, str(status)).observe(time.perf_counter() - started)
