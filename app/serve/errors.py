"""Errors of the serving path, raised where they arise and mapped to HTTP in app.serve.app."""

from __future__ import annotations

from app.errors import SbnnError


class ModelNotFound(SbnnError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class ModelNotReady(SbnnError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model '{name}' is not ready: {reason}")
        self.name = name
        self.reason = reason


class RequestRejected(SbnnError):
    """A request that is well-formed JSON but asks for more than the server allows, or is malformed for
    its protocol (field and reason named)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Overloaded(SbnnError):
    """More is waiting than this server takes on: 503 with Retry-After (gRPC: UNAVAILABLE); the request did
    not run."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class DeadlineExceeded(SbnnError):
    """Not answered within the server's deadline: 504 (gRPC: DEADLINE_EXCEEDED). Work still queued is dropped."""
