"""The protocol-agnostic data plane: one ``infer`` for /v1 and /v2, and model metadata.

validate -> preprocess -> batched Monte Carlo pass -> decompose -> gate -> metrics and drift, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.bnn.spec import Sampler
from app.checkpoint.manifest import Manifest
from app.serve.backend import InferenceOptions, Scores
from app.serve.drift import DriftMonitor
from app.serve.engine import BatchingEngine
from app.serve.errors import RequestRejected
from app.serve.gate import Decision, decide, flag, percentile_in_reference
from app.serve.metrics import ServiceMetrics
from app.serve.repository import ModelRepository, ModelState, ServedModel
from app.serve.settings import Settings
from app.serve.validation import Locate, validate_columns


@dataclass(frozen=True)
class InferenceResult:
    """A request's answer, per row arrays (N,) except probs (N, C)."""

    model: ServedModel
    samples: int
    seed: int
    scores: Scores
    percentile: np.ndarray
    flags: np.ndarray
    decisions: list[Decision]

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def labels(self) -> list[str]:
        names = self.manifest.task.labels
        return [names[i] for i in self.scores.probs.argmax(1).tolist()]


class DataPlane:
    def __init__(
        self, settings: Settings, repository: ModelRepository, engine: BatchingEngine, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.engine = engine
        self.metrics = metrics
        self._drift: dict[str, DriftMonitor] = {}

    def model(self, name: str) -> ServedModel:
        """The ready model ``name`` (404 unknown, 503 not ready)."""
        return self.repository.get(name)

    def options(
        self,
        model: ServedModel,
        rows: int,
        samples: int | None,
        seed: int | None,
        sampler: Sampler | None,
        tolerance: float | None,
        prefix: str = "",
        rows_field: str = "instances",
    ) -> InferenceOptions:
        """Check a request's rows and Monte Carlo options against the server's limits and the model."""
        if rows < 1:
            raise RequestRejected(rows_field, "at least one row is required")
        if rows > self.settings.max_rows:
            raise RequestRejected(rows_field, f"{rows} rows exceed this server's limit of {self.settings.max_rows}")
        if samples is not None and not 1 <= samples <= self.settings.max_samples:
            limit = self.settings.max_samples
            raise RequestRejected(f"{prefix}samples", f"must be between 1 and {limit}, got {samples}")
        if tolerance is not None and not 0.0 < tolerance < 1.0:
            raise RequestRejected(f"{prefix}tolerance", f"must be in (0, 1), got {tolerance}")
        backend = model.backend
        assert backend is not None  # a ready model has its backend
        if samples is None:
            # Adaptive requests stop by themselves: their cap is the server's maximum.
            samples = self.settings.max_samples if tolerance is not None else model.manifest.default_samples
            samples = backend.num_samples(samples) if tolerance is None else samples
        sampler = sampler or self.settings.sampler
        if (refusal := backend.refuse(sampler, samples, seed, tolerance)) is not None:
            option, reason = refusal
            raise RequestRejected(f"{prefix}{option}", reason)
        return InferenceOptions(samples=samples, seed=seed, sampler=sampler, tolerance=tolerance)

    async def infer(
        self,
        model: ServedModel,
        columns: Mapping[str, Sequence[object]],
        options: InferenceOptions,
        locate: Locate,
    ) -> InferenceResult:
        """Score validated raw columns as ``options`` ask (the seed, when absent, is chosen and returned)."""
        manifest = model.manifest
        x = validate_columns(manifest, columns, locate)
        scores = await self.engine.submit(model, x, options)
        flags = flag(scores.epistemic, manifest.ood)
        result = InferenceResult(
            model=model,
            samples=scores.samples,
            seed=scores.seed,
            scores=scores,
            percentile=percentile_in_reference(scores.epistemic, manifest.ood.reference_quantiles),
            flags=flags,
            decisions=decide(flags),
        )
        self._record(model, result)
        return result

    def _record(self, model: ServedModel, result: InferenceResult) -> None:
        name = model.name
        histogram = self.metrics.epistemic.labels(name)
        for value in result.scores.epistemic.tolist():
            histogram.observe(value)
        rows = len(result.decisions)
        referred = int(result.flags.sum())
        self.metrics.predictions.labels(name).inc(rows)
        self.metrics.ood_flags.labels(name).inc(referred)
        self.metrics.decisions.labels(name, Decision.REFER.value).inc(referred)
        self.metrics.decisions.labels(name, Decision.ACCEPT.value).inc(rows - referred)
        monitor = self._drift.get(name)
        if monitor is None:
            monitor = self._drift[name] = DriftMonitor(
                model.manifest.ood.reference_quantiles, self.settings.drift_window, self.settings.drift_min_rows
            )
        snapshot = monitor.record(result.scores.epistemic, result.flags)
        if snapshot is not None:
            self.metrics.drift_psi.labels(name).set(snapshot.psi)
            self.metrics.drift_ks.labels(name).set(snapshot.ks)
            self.metrics.drift_ood_rate.labels(name).set(snapshot.ood_rate)
            self.metrics.drift_window_rows.labels(name).set(snapshot.rows)

    def publish_model_metrics(self) -> None:
        """Model info and readiness gauges, after loading."""
        for entry in self.repository.entries():
            ready = entry.state is ModelState.READY
            self.metrics.model_ready.labels(entry.name).set(1.0 if ready else 0.0)
            if ready:
                m = entry.manifest
                ranks = "/".join("-" if r is None else str(r) for r in m.ranks)
                self.metrics.model_info.labels(entry.name, m.version, m.weights.sha256, m.kind.value, ranks).set(1.0)
