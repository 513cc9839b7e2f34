"""API keys with scopes: who may call what, for REST (an ASGI middleware) and gRPC (a server interceptor).

A key is a random token the client sends as ``Authorization: Bearer <token>`` (gRPC: the ``authorization``
metadata). The server stores only its SHA-256 (tokens are 256 random bits, so a fast hash is as good as a slow
one and keeps the check cheap), an id (the name logs use; never the token) and its scopes:

- ``infer``: predict and infer on every surface, model and server metadata, /docs when they are behind a key;
- ``metrics``: ``/metrics``;
- ``admin``: the model repository's operations.

Health probes stay open (``/v2/health/live``, ``/v2/health/ready``, ``GET /``, model readiness, gRPC
ServerLive/ServerReady/ModelReady and ``grpc.health.v1``): an orchestrator's probe carries no key. Without any
key configured nothing is checked (the server then refuses a non-loopback address unless told otherwise;
``app.serve.app``). Keys come from a JSON file, re-read when it changes (rotation without a restart; a file
that does not parse keeps the last good keys and logs why), and/or from ``SBNN_API_KEYS`` (the same JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.serve.middleware import error_response

log = logging.getLogger("sbnn.serve.auth")
RELOAD_EVERY_S = 1.0  # how often the keys file's modification time is looked at


class KeyScope(str, Enum):
    INFER = "infer"
    METRICS = "metrics"
    ADMIN = "admin"


class DocsAccess(str, Enum):
    PUBLIC = "public"  # /docs and /openapi.json for anyone who can reach the server
    INFER = "infer"  # behind a key with the infer scope
    OFF = "off"  # not served


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="The key's name in logs and the audit trail.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the token, hex.")
    scopes: list[KeyScope] = Field(min_length=1)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]


@dataclass(frozen=True)
class Caller:
    key_id: str
    scopes: frozenset[KeyScope]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(key_id: str, scopes: Iterable[KeyScope]) -> tuple[str, KeyEntry]:
    """A fresh token (shown once, never stored) and the entry that stores its hash."""
    token = "sbnn_" + secrets.token_urlsafe(32)
    return token, KeyEntry(id=key_id, sha256=token_hash(token), scopes=sorted(set(scopes), key=lambda s: s.value))


def _entries(text: str, where: str) -> dict[str, Caller]:
    try:
        parsed = KeysFile.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{where}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    ids = [entry.id for entry in parsed.keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: key ids must be unique")
    return {entry.sha256: Caller(entry.id, frozenset(entry.scopes)) for entry in parsed.keys}


class KeyRing:
    """The configured keys by token hash; the file's keys are re-read when its modification time changes."""

    def __init__(self, path: Path | None, inline: str | None) -> None:
        self.path = path
        self._inline = _entries(inline, "SBNN_API_KEYS") if inline else {}
        self._file: dict[str, Caller] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            if not path.is_file():
                raise ValueError(f"api_keys_file {path}: not a file")
            self._reload(strict=True)

    @property
    def enabled(self) -> bool:
        return bool(self._inline or self._file or self.path is not None)

    def _reload(self, strict: bool) -> None:
        assert self.path is not None
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            self._file = _entries(self.path.read_text(encoding="utf-8"), f"api_keys_file {self.path.name}")
        except (ValueError, OSError) as exc:
            if strict:
                raise ValueError(str(exc)) from None
            log.error("keys file not reloaded, the previous keys stay in force: %s", exc)
        else:
            if self._stamp is not None:
                log.info("keys file reloaded: %d keys", len(self._file))
        self._stamp = stamp

    def lookup(self, token: str) -> Caller | None:
        if self.path is not None and time.monotonic() - self._checked > RELOAD_EVERY_S:
            with self._lock:
                self._checked = time.monotonic()
                try:
                    self._reload(strict=False)
                except OSError as exc:  # the file went away: keep the last good keys
                    log.error("keys file not readable, the previous keys stay in force: %s", exc)
        digest = token_hash(token)
        return self._inline.get(digest) or self._file.get(digest)


BEARER = re.compile(r"Bearer[ \t]+([!-~]{1,512})[ \t]*", re.IGNORECASE)


def bearer(value: str | None) -> str | None:
    match = BEARER.fullmatch(value or "")
    return match.group(1) if match else None


# REST routes by the scope they need (None: open); the first match wins, everything else needs infer.
OPEN = re.compile(r"/|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")
DOCS = re.compile(r"/docs(/oauth2-redirect)?|/redoc|/openapi\.json")


def rest_scope(path: str, docs: DocsAccess) -> KeyScope | None:
    if OPEN.fullmatch(path):
        return None
    if path == "/metrics":
        return KeyScope.METRICS
    if DOCS.fullmatch(path):
        return None if docs is DocsAccess.PUBLIC else KeyScope.INFER
    if path.startswith("/v2/repository"):
        return KeyScope.ADMIN
    return KeyScope.INFER


def decide(keys: KeyRing, header: str | None, needed: KeyScope | None) -> tuple[int, str, Caller | None]:
    """(0, "", caller) when allowed, else (401 or 403, why); the caller is None on an open route."""
    if needed is None or not keys.enabled:
        return 0, "", None
    token = bearer(header)
    if token is None:
        return 401, "an API key is required: send 'Authorization: Bearer <key>'", None
    caller = keys.lookup(token)
    if caller is None:
        return 401, "the API key is not valid", None
    if needed not in caller.scopes:
        return 403, f"key '{caller.key_id}' lacks the '{needed.value}' scope", caller
    return 0, "", caller


class AuthMiddleware:
    """401 (with ``WWW-Authenticate: Bearer``) or 403 in each surface's error shape, before the body is read;
    the caller's key id goes to ``scope["state"]["key_id"]`` for the access log."""

    def __init__(self, app: ASGIApp, keys: KeyRing, docs: DocsAccess) -> None:
        self.app = app
        self.keys = keys
        self.docs = docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        status, why, caller = decide(self.keys, header, rest_scope(scope["path"], self.docs))
        if caller is not None:
            scope.setdefault("state", {})["key_id"] = caller.key_id
        if status:
            challenge = [(b"www-authenticate", b'Bearer realm="sbnn"')] if status == 401 else []
            await error_response(scope, send, status, why, challenge)
            return
        await self.app(scope, receive, send)


GRPC_OPEN = {"ServerLive", "ServerReady", "ModelReady"}


def grpc_scope(method: str) -> KeyScope | None:
    """``/inference.GRPCInferenceService/ModelInfer`` -> infer; health and readiness RPCs are open."""
    service, _, name = method.lstrip("/").partition("/")
    if service == "grpc.health.v1.Health" or name in GRPC_OPEN:
        return None
    return KeyScope.INFER


def grpc_interceptor(keys: KeyRing) -> Any:
    """A grpc.aio server interceptor: UNAUTHENTICATED or PERMISSION_DENIED with the REST message."""
    import grpc

    class Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
            header = dict(details.invocation_metadata or ()).get("authorization")
            status, why, _ = decide(keys, header, grpc_scope(details.method))
            if not status:
                return await continuation(details)
            code = grpc.StatusCode.UNAUTHENTICATED if status == 401 else grpc.StatusCode.PERMISSION_DENIED

            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(code, why)

            return grpc.unary_unary_rpc_method_handler(refuse)

    return Interceptor()


def keys_json(entries: list[KeyEntry]) -> str:
    return json.dumps({"keys": [e.model_dump(mode="json") for e in entries]}, indent=2)
