"""The protocol-agnostic data plane: one ``infer`` for /v1 and /v2, and model metadata.

validate -> screen (bounds, support) -> preprocess -> batched Monte Carlo pass of the rows not rejected ->
density and epistemic -> the gate's decisions and reasons -> metrics and drift, once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.bnn.spec import Sampler
from app.checkpoint.manifest import Manifest
from app.errors import SchemaError
from app.gate.gate import Decision, GateResult
from app.gate.spec import Component
from app.serve.backend import InferenceOptions, Scores
from app.serve.engine import BatchingEngine
from app.serve.errors import RequestRejected
from app.serve.metrics import ServiceMetrics
from app.serve.repository import ModelRepository, ModelState, ServedModel
from app.serve.settings import RejectMode, Settings
from app.serve.validation import Locate, encode_scored, validate_columns


@dataclass(frozen=True)
class InferenceResult:
    """A request's answer: the predictive of the rows the gate let through (``scores``, None when it rejected
    every row; ``scored``: (N,) bool marks them among the request's rows) and the gate's answer for all N."""

    model: ServedModel
    options: InferenceOptions
    scores: Scores | None
    scored: np.ndarray
    gate: GateResult

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def rows(self) -> int:
        return int(self.scored.size)

    def per_row(self, values: np.ndarray) -> list[Any]:
        """Scored rows' values (N_scored, ...) as a list over all N rows, None for a rejected row."""
        out: list[Any] = [None] * self.rows
        for row, value in zip(np.flatnonzero(self.scored).tolist(), values.tolist(), strict=True):
            out[row] = value
        return out

    @property
    def labels(self) -> list[str | None]:
        if self.scores is None:
            return [None] * self.rows
        names = self.manifest.task.labels
        return self.per_row(np.array([names[i] for i in self.scores.probs.argmax(1).tolist()], dtype=object))


class DataPlane:
    def __init__(
        self, settings: Settings, repository: ModelRepository, engine: BatchingEngine, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.engine = engine
        self.metrics = metrics

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
        """Gate and score validated raw columns as ``options`` ask (the seed, when absent, is chosen and
        returned): rows the bounds reject are not scored, the others are, and every row is explained."""
        manifest, gate = model.manifest, model.gate
        assert gate is not None  # a ready model has its gate
        raw = validate_columns(manifest, columns, locate)
        screen = gate.screen(*raw)
        if self.settings.reject_mode is RejectMode.REQUEST and screen.rejected.any():
            row = int(np.flatnonzero(screen.rejected)[0])
            feature = screen.reasons[row][0].split(":", 1)[1]
            raise SchemaError(locate(feature, row), screen.details[row][0])
        scored = ~screen.rejected
        x = encode_scored(manifest, raw, scored, columns, locate)
        scores = await self.engine.submit(model, x, options) if scored.any() else None
        density = np.full(scored.size, np.nan)
        epistemic = np.full(scored.size, np.nan)
        if scores is not None:
            density[scored] = gate.density(x)
            epistemic[scored] = scores.epistemic
        result = InferenceResult(model, options, scores, scored, gate.decide(screen, density, epistemic))
        self._record(model, result)
        return result

    def _record(self, model: ServedModel, result: InferenceResult) -> None:
        name, metrics, gate = model.name, self.metrics, result.gate
        if result.scores is not None:
            histogram = metrics.epistemic.labels(name)
            for value in result.scores.epistemic[np.isfinite(result.scores.epistemic)].tolist():
                histogram.observe(value)
        metrics.predictions.labels(name).inc(result.rows)
        counts = Counter(gate.decisions)
        for decision in Decision:
            if counts[decision]:
                metrics.decisions.labels(name, decision.value).inc(counts[decision])
        # A row counts once per component, however many of its features that component named.
        components = Counter(c for reasons in gate.reasons for c in {r.split(":", 1)[0] for r in reasons})
        for component, count in components.items():
            metrics.gate_reasons.labels(name, component).inc(count)
        spec = model.manifest.gate
        references = {"epistemic": spec.epistemic.reference_quantiles, "density": spec.density.reference_quantiles}
        monitor = metrics.drift.monitor(name, references, self.settings.drift_window, self.settings.drift_min_rows)
        windows = {"epistemic": gate.scores[Component.EPISTEMIC], "density": gate.scores[Component.DENSITY]}
        # Only the scored rows' finite scores enter the windows; every row's decision enters the rate.
        monitor.record({k: v[np.isfinite(v)] for k, v in windows.items()}, ~gate.accepted)

    def publish_model_metrics(self) -> None:
        """Model info and readiness gauges, after loading."""
        for entry in self.repository.entries():
            ready = entry.state is ModelState.READY
            self.metrics.model_ready.labels(entry.name).set(1.0 if ready else 0.0)
            if ready:
                m = entry.manifest
                ranks = "/".join("-" if r is None else str(r) for r in m.ranks)
                self.metrics.model_info.labels(entry.name, m.version, m.weights.sha256, m.kind.value, ranks).set(1.0)
