"""Service settings: environment variables with the ``SBNN_`` prefix, or ``sbnn serve`` options."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.audit.writer import Overflow
from app.bnn.spec import Sampler
from app.serve.auth import DocsAccess
from app.serve.backend import BackendKind
from app.serve.repository import ReadyWhen
from app.serve.versions import VersionPolicy


class RejectMode(str, Enum):
    ROW = "row"  # a row outside its plausible bounds is answered "reject" (no prediction); the others are scored
    REQUEST = "request"  # such a row fails the whole request with a 4xx naming the field and the bound


class Settings(BaseSettings):
    """Every setting of the server; see docs/serving.md for the table."""

    model_config = SettingsConfigDict(env_prefix="SBNN_", extra="forbid")

    models: Path = Field(
        Path("models"), description="Model repository: a folder per model (a checkpoint, or one per version)."
    )
    version_policy: VersionPolicy = Field(
        VersionPolicy.LATEST, description="Versions served of a model with version folders: latest or all."
    )
    pinned_versions: dict[str, list[str]] = Field(
        default_factory=dict, description='Versions served per model, over the policy: {"name": ["1", "3"]}.'
    )
    ready_when: ReadyWhen = Field(
        ReadyWhen.ALL, description="Readiness: all (every model asked for is ready) or any (at least one is)."
    )
    watch: bool = Field(False, description="Reload a model when files under its folder change (debounced).")
    watch_debounce_s: float = Field(
        2.0, gt=0.0, le=600.0, description="--watch: quiet time after a model's last file change before it reloads."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="SIGTERM/SIGINT: how long requests in flight may finish, then cancelled."
    )
    tmp_dir: Path | None = Field(
        None, description="Writable folder for temporary files and caches (TMPDIR; read-only root filesystems)."
    )
    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 inside containers).")
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8081, ge=0, le=65535, description="gRPC port (Open Inference Protocol); 0 turns it off.")
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A second listener on the host's address serving only /metrics, without API keys, for "
        "per-process scrapes (Ray Serve replicas: docs/deploy.md); 0 turns it off.",
    )
    load_before_serving: bool = Field(
        False,
        description="Startup waits for the model repository's first load before taking requests (a host that "
        "routes as soon as the app has started, as Ray Serve does); off: /v2/health/live answers at once.",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when available.")
    max_samples: int = Field(4096, ge=1, le=65536, description="Largest Monte Carlo sample count a request may ask.")
    max_rows: int = Field(1024, ge=1, le=100_000, description="Largest number of rows (instances) per request.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    batch_max_rows: int = Field(2048, ge=1, description="Dynamic batching: most rows coalesced into one pass.")
    batch_max_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="Batching: longest wait for company, only while busy."
    )
    max_queued_rows: int = Field(
        8192, ge=1, description="Rows waiting or running per model; a request beyond them is a 503 (load shedding)."
    )
    request_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="A request not answered within this is a 504; its queued work is dropped."
    )
    max_request_compute_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="A request whose estimated compute exceeds this is refused (4xx)."
    )
    max_request_memory_mb: float = Field(
        1024.0, gt=0.0, description="A request whose estimated peak memory exceeds this is refused (4xx)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="A request's headers not received within this: the connection is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="A request's body not received within this: 408, connection closed."
    )
    backend: BackendKind = Field(
        BackendKind.AUTO, description="torch (every sampler), onnx (the exported bank, no torch) or auto."
    )
    sampler: Sampler = Field(Sampler.AUTO, description="Default sampler: auto (cost model), bank, fresh or local.")
    bank_samples: int | None = Field(
        None, ge=0, le=65536, description="Weight samples in each model's frozen bank (default: its default S; 0 none)."
    )
    bank_seed: int = Field(0, ge=0, lt=2**63, description="Seed of the frozen banks' draws.")
    reject_mode: RejectMode = Field(
        RejectMode.ROW, description="row: a row outside the plausible bounds is rejected alone; request: 422/400."
    )
    drift_window: int = Field(1000, ge=10, le=1_000_000, description="Recent predictions per model used for drift.")
    drift_min_rows: int = Field(50, ge=1, description="Rows in the window before drift gauges are reported.")
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug)$")
    api_keys_file: Path | None = Field(
        None, description="JSON file of API keys (id, sha256 of the token, scopes), re-read when it changes."
    )
    api_keys: str | None = Field(None, description="API keys as the same JSON, e.g. from a secret (SBNN_API_KEYS).")
    allow_unauthenticated: bool = Field(
        False, description="Serve a non-loopback address without any API key (anyone who can reach it may call)."
    )
    docs: DocsAccess = Field(DocsAccess.INFER, description="/docs and /openapi.json: public, infer (a key) or off.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins browsers may call from (CORS).")
    audit_dir: Path | None = Field(
        None, description="Audit trail in SQLite at <audit_dir>/audit.db (needs sbnn[audit])."
    )
    audit_url: str | None = Field(
        None, description="Audit trail database URL, e.g. postgresql+psycopg://… (over audit_dir; sbnn[audit])."
    )
    audit_queue: int = Field(10_000, ge=1, le=10_000_000, description="Audit records waiting to be written, at most.")
    audit_overflow: Overflow = Field(
        Overflow.FAIL_CLOSED, description="A full audit queue: fail_closed (503, nothing unrecorded) or drop (count)."
    )
    audit_retention_days: int | None = Field(None, ge=1, description="Delete audit records older than this (daily).")
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans per prediction (infer, validate, queue, compute, gate) to the process's "
        "tracer provider, e.g. under opentelemetry-instrument; off: no OpenTelemetry call at all.",
    )

    @property
    def audit_database(self) -> str | None:
        """The audit trail's URL: audit_url, else SQLite under audit_dir, else None (no trail)."""
        if self.audit_url:
            return self.audit_url
        return None if self.audit_dir is None else f"sqlite:///{(self.audit_dir / 'audit.db').resolve()}"

    @field_validator("models")
    @classmethod
    def _models_is_not_a_file(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"models must be a directory, got a file: {value}")
        return value
