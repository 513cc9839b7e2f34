"""Errors raised where they arise; the CLI and the service map them to messages and status codes."""

from __future__ import annotations


class SbnnError(Exception):
    """Base class of the errors this package raises on purpose."""


class SchemaError(SbnnError, ValueError):
    """A feature record does not match the model's feature schema."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CheckpointError(SbnnError):
    """A checkpoint folder is missing, malformed, tampered with or of an unsupported format."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(SbnnError, ValueError):
    """A training or evaluation table cannot be used as asked."""


class WarmStartError(SbnnError, ValueError):
    """A warm-start twin cannot seed this training run (other kind, layers, features or preprocessing)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BoundError(SbnnError, ValueError):
    """A PAC-Bayes bound report cannot be made as asked (a point-estimate kind, or a twin that does not fit)."""


class MissingExtra(SbnnError, ImportError):
    """An optional dependency is not installed: ``extra`` names the ``sbnn[...]`` extra that brings it."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the optional '{package}' package: pip install 'sbnn[{extra}]'")
        self.name = package  # ImportError's attribute: the module that is missing
        self.package = package
        self.extra = extra
