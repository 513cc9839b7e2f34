"""The protocol-agnostic data plane: one ``infer`` for /v1 and /v2, and model metadata.

validate -> preprocess -> batched Monte Carlo pass -> decompose -> gate -> metrics and drift, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.checkpoint.manifest import Manifest
from app.serve.drift import DriftMonitor
from app.serve.engine import BatchingEngine, Scores
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

    def check_options(
        self, model: ServedModel, rows: int, samples: int | None, samples_field: str, rows_field: str = "instances"
    ) -> int:
        """Row and sample limits; returns the sample count to use."""
        if rows < 1:
            raise RequestRejected(rows_field, "at least one row is required")
        if rows > self.settings.max_rows:
            raise RequestRejected(rows_field, f"{rows} rows exceed this server's limit of {self.settings.max_rows}")
        if samples is None:
            return model.checkpoint.model.num_samples(model.manifest.default_samples)  # type: ignore[union-attr]
        if not 1 <= samples <= self.settings.max_samples:
            raise RequestRejected(samples_field, f"must be between 1 and {self.settings.max_samples}, got {samples}")
        return model.checkpoint.model.num_samples(samples)  # type: ignore[union-attr]

    async def infer(
        self,
        model: ServedModel,
        columns: Mapping[str, Sequence[object]],
        samples: int,
        seed: int | None,
        locate: Locate,
    ) -> InferenceResult:
        """Score validated raw columns with ``samples`` weight samples (and ``seed``, or a fresh one)."""
        manifest = model.manifest
        x = validate_columns(manifest, columns, locate)
        scores = await self.engine.submit(model, x, samples, seed)
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
