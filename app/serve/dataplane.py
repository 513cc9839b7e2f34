"""The protocol-agnostic data plane: one ``infer`` for /v1 and /v2, and model metadata.

A router decodes its wire format into a ``ScoringRequest`` and makes this one call; ``infer`` walks the
corridor (docs/serving.md): the model, its decoded columns, the server's limits and the backend's plan, the
checkpoint's preprocessing checking every value once, the gate's screen (bounds, support), the batched Monte
Carlo pass of the rows not rejected, density and epistemic, the gate's decisions and reasons, then metrics and
drift, once. A sequence model's rows are sequences: its corridor between decoding and the pass is
``app.serve.sequences`` (every step checked and screened, the last max_length steps scored); a text model's rows
are texts, and its corridor ``app.serve.texts`` (limits, the checkpoint's tokenizer, the text gate's screen).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.bnn.plan import Plan, PlanRefused
from app.bnn.spec import Sampler
from app.checkpoint.manifest import Manifest
from app.data.schema import FeatureError
from app.errors import SchemaError
from app.gate.gate import Decision, Gate, GateResult
from app.gate.spec import Component
from app.serve import audit
from app.serve.backend import AnyScores, Scores
from app.serve.batching import BatchingEngine
from app.serve.errors import RequestRejected
from app.serve.metrics import ServiceMetrics
from app.serve.repository import LoadOutcome, ModelRepository, ModelState, ServedModel
from app.serve.sequences import LocateStep, Prepared, prepare_sequences
from app.serve.settings import RejectMode, Settings
from app.serve.texts import prepare_texts

Locate = Callable[[str, int], str]  # (feature, row) -> the field as the client named it
Columns = dict[str, list[Any]]  # feature -> its N raw values


@dataclass(frozen=True)
class RequestOptions:
    """A request's Monte Carlo options as the client sent them (None: the server's or model's default)."""

    samples: int | None = None
    seed: int | None = None
    sampler: Sampler | None = None
    tolerance: float | None = None
    timeout_s: float | None = None  # the request's own deadline (the server's applies when it is shorter)


@dataclass(frozen=True)
class Decoded:
    """A body decoded for its model: raw ``columns`` (feature -> N values; for a sequence model, the ΣT values of
    its N sequences' steps, each sequence's contiguous and oldest first; empty for a text model), the Monte Carlo
    options, for a sequence model ``lengths`` (N,) int64, each ≥ 1 (None for a flat one), and for a text model
    its N ``texts`` as sent (None otherwise)."""

    columns: Columns
    options: RequestOptions
    lengths: np.ndarray | None = None
    texts: list[Any] | None = None


Decode = Callable[[Manifest], Decoded]  # the model's manifest (features, sequence schema) -> the decoded body


@dataclass(frozen=True)
class ScoringRequest:
    """A request as a protocol decoded it, before anything model-specific is checked.

    ``decode`` turns the body into raw columns and options once the model is found and its manifest is known
    (raising the protocol's errors: unknown, missing or duplicated features, tensor shapes and datatypes,
    sequence lengths, malformed options), so an unknown or unready model is a 404 or 503 whatever the body
    holds; ``locate`` names a value's field as the protocol does, ``locate_step`` a sequence step's;
    ``option_field`` prefixes the option fields (``parameters.`` on /v2), ``rows_field`` names the rows
    (``instances``, ``inputs``) and ``timeout_s`` is the transport's deadline, if it has one.
    """

    model: str
    decode: Decode
    locate: Locate
    locate_step: LocateStep
    option_field: str = ""
    rows_field: str = "instances"
    timeout_s: float | None = None  # a deadline the transport carries (gRPC's), besides the body's
    version: str | None = None  # the model version the path named (None: the highest ready one)


@dataclass(frozen=True)
class InferenceResult:
    """A request's answer: the predictive of the rows the gate let through (``scores``, with the plan that ran;
    None when it rejected every row; ``scored``: (N,) bool marks them among the request's rows), the gate's
    answer for all N, and ``planned``, the plan the request was given (what would have run)."""

    model: ServedModel
    planned: Plan
    scores: AnyScores | None
    scored: np.ndarray
    gate: GateResult

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def rows(self) -> int:
        return int(self.scored.size)

    @property
    def samples(self) -> int:
        """The samples drawn, or those planned when no row was scored."""
        return (self.planned if self.scores is None else self.scores.plan).samples

    def per_row(self, values: np.ndarray) -> list[Any]:
        """Scored rows' values (N_scored, ...) as a list over all N rows, None for a rejected row."""
        out: list[Any] = [None] * self.rows
        for row, value in zip(np.flatnonzero(self.scored).tolist(), values.tolist(), strict=True):
            out[row] = value
        return out

    def spread(self, values: np.ndarray) -> np.ndarray:
        """Scored rows' values (N_scored, ...) as a float64 array over all N rows, NaN for a rejected row."""
        out = np.full((self.rows, *values.shape[1:]), np.nan)
        out[self.scored] = values
        return out

    def labels_or(self, fill: str | None) -> np.ndarray:
        """(N,) object: each scored row's most probable label, ``fill`` for a rejected row (and every row of a
        regression, which has no labels)."""
        out = np.full(self.rows, fill, dtype=object)
        if isinstance(self.scores, Scores):
            out[self.scored] = np.array(self.manifest.task.labels, dtype=object)[self.scores.probs.argmax(1)]
        return out

    @property
    def labels(self) -> list[str | None]:
        return self.labels_or(None).tolist()


class DataPlane:
    def __init__(
        self, settings: Settings, repository: ModelRepository, engine: BatchingEngine, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.engine = engine
        self.metrics = metrics
        self.readiness_listeners: list[Callable[[bool], None]] = []  # told the server's readiness on each change

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model ``name``, its ``version`` or else the highest ready one (404 unknown, 503 not ready)."""
        return self.repository.get(name, version)

    def plan(self, model: ServedModel, request: ScoringRequest, options: RequestOptions, rows: int) -> Plan:
        """The server's limits (rows, samples, tolerance), the backend's plan for the request's options, then
        the compute budget (``budget``); RequestRejected naming the field otherwise."""
        settings, prefix = self.settings, request.option_field
        if rows < 1:
            raise RequestRejected(request.rows_field, "at least one row is required")
        if rows > settings.max_rows:
            raise RequestRejected(request.rows_field, f"{rows} rows exceed this server's limit of {settings.max_rows}")
        samples, tolerance = options.samples, options.tolerance
        if samples is not None and not 1 <= samples <= settings.max_samples:
            raise RequestRejected(f"{prefix}samples", f"must be between 1 and {settings.max_samples}, got {samples}")
        if tolerance is not None and not 0.0 < tolerance < 1.0:
            raise RequestRejected(f"{prefix}tolerance", f"must be in (0, 1), got {tolerance}")
        if samples is None:  # adaptive requests stop by themselves: their cap is the server's maximum
            samples = settings.max_samples if tolerance is not None else model.manifest.default_samples
        backend = model.backend
        assert backend is not None  # a ready model has its backend
        try:
            plan = backend.plan(options.sampler or settings.sampler, rows, samples, options.seed, tolerance)
        except PlanRefused as refusal:
            raise RequestRejected(f"{prefix}{refusal.option}", refusal.reason) from None
        self.budget(model, plan, rows, f"{prefix}samples")
        return plan

    def budget(self, model: ServedModel, plan: Plan, rows: int, field: str) -> None:
        """Refuse, before it runs, a request estimated (``Backend.cost``, worst case: an adaptive plan's cap)
        to need more compute or memory than the server allows one request, naming the limit and what fits."""
        assert model.backend is not None  # a ready model has its backend
        cost, settings = model.backend.cost(plan, rows), self.settings
        megabytes = cost.bytes / 2**20
        limits = [  # (how far over, the estimate, the limit and its setting)
            (cost.seconds / settings.max_request_compute_s, f"{cost.seconds:.3g} s of compute",
             f"{settings.max_request_compute_s:g} s (SBNN_MAX_REQUEST_COMPUTE_S)"),
            (megabytes / settings.max_request_memory_mb, f"{megabytes:.0f} MB of memory",
             f"{settings.max_request_memory_mb:g} MB (SBNN_MAX_REQUEST_MEMORY_MB)"),
        ]  # fmt: skip
        ratio, estimate, limit = max(limits)
        if ratio <= 1.0:
            return
        samples, fewer_rows = max(1, int(plan.samples / ratio)), max(1, int(rows / ratio))
        raise RequestRejected(
            field,
            f"{rows} rows × {plan.samples} samples ({plan.sampler.value}) is estimated at {estimate}, over this "
            f"server's {limit} per request; about {samples} samples for these rows, or {fewer_rows} rows at "
            f"{plan.samples} samples, would fit",
        )

    async def infer(self, request: ScoringRequest) -> InferenceResult:
        """The corridor: gate and score the request's rows as planned (the seed, when absent, is chosen and
        returned): rows the bounds reject are not scored, the others are, and every row is explained. With
        tracing on, each stage is a span (app.serve.tracing)."""
        tracing = self.engine.tracing
        with tracing.span("sbnn.infer", model=request.model) as span:
            model = self.model(request.model, request.version)
            manifest, gate = model.manifest, model.gate
            assert gate is not None  # a ready model has its gate
            with tracing.span("sbnn.validate"):
                plan, prepared, options = self._validate(model, request)
            screen, scored = prepared.screen, prepared.scored
            scores = None
            if scored.any():
                deadlines = [t for t in (options.timeout_s, request.timeout_s) if t is not None]
                scores = await self.engine.submit(model, prepared.inputs, plan, min(deadlines) if deadlines else None)
            with tracing.span("sbnn.gate"):
                density = np.full(scored.size, np.nan)
                epistemic = np.full(scored.size, np.nan)
                if scores is not None:
                    features = prepared.density_input
                    if features is None:  # the backend's pass computed it (a text model's pooled encoder state)
                        assert isinstance(scores, Scores) and scores.features is not None
                        features = scores.features
                    density[scored] = gate.density(features)
                    epistemic[scored] = scores.epistemic  # a regression's: the epistemic variance, the target's unit²
                result = InferenceResult(model, plan, scores, scored, gate.decide(screen, density, epistemic))
            if span is not None:
                decisions = Counter(d.value for d in result.gate.decisions)
                span.set_attributes(
                    {
                        "sbnn.model.version": manifest.version,
                        "sbnn.rows": result.rows,
                        "sbnn.samples": result.samples,
                        "sbnn.sampler": (scores.plan if scores is not None else plan).sampler.value,
                        **{f"sbnn.decisions.{d.value}": decisions[d.value] for d in Decision},
                    }
                )
            self._record(model, result)
            return result

    def _validate(self, model: ServedModel, request: ScoringRequest) -> tuple[Plan, Prepared, RequestOptions]:
        """Decode the body for its model, plan it within the server's limits, then check, screen and encode
        every value (rows, sequences or texts) once, in the checkpoint's own preprocessing."""
        manifest, gate = model.manifest, model.gate
        assert gate is not None  # a ready model has its gate
        decoded = request.decode(manifest)
        columns, options, lengths, texts = decoded.columns, decoded.options, decoded.lengths, decoded.texts
        if texts is not None:
            rows = len(texts)
        else:
            rows = len(next(iter(columns.values()))) if lengths is None else int(lengths.size)
        plan = self.plan(model, request, options, rows)
        reject_request = self.settings.reject_mode is RejectMode.REQUEST
        if texts is not None:  # app.serve.texts: limits, the checkpoint's tokenizer, the text gate's screen
            assert model.encoder is not None  # a ready text model has its tokenizer
            prepared = prepare_texts(manifest, gate, model.encoder, texts, request.locate, reject_request)
        elif lengths is None:
            prepared = self._prepare_rows(manifest, gate, request, columns, reject_request)
        else:  # app.serve.sequences: every step checked and screened, the last max_length steps scored
            prepared = prepare_sequences(manifest, gate, columns, lengths, request.locate_step, reject_request)
        return plan, prepared, options

    @staticmethod
    def _prepare_rows(
        manifest: Manifest, gate: Gate, request: ScoringRequest, columns: Columns, reject_request: bool
    ) -> Prepared:
        """Check, screen and encode flat rows: SchemaError naming the field of a value the preprocessing
        refuses, and, with ``reject_request``, of the first impossible one."""
        try:
            numeric, codes = manifest.preprocessing.raw_values(columns)
        except FeatureError as err:
            raise SchemaError(request.locate(err.feature, err.row), err.reason) from None
        screen = gate.screen(numeric, codes)
        if reject_request and screen.rejected.any():
            row = int(np.flatnonzero(screen.rejected)[0])
            feature = screen.reasons[row][0].split(":", 1)[1]
            raise SchemaError(request.locate(feature, row), screen.details[row][0])
        scored = ~screen.rejected
        # Rows within the gate's bounds encode finitely (no value is over MAX_STANDARD_SCORE SDs out).
        x = manifest.preprocessing.encode(
            {k: v[scored] for k, v in numeric.items()}, {k: v[scored] for k, v in codes.items()}
        )
        return Prepared(screen, scored, x, x)

    def _record(self, model: ServedModel, result: InferenceResult) -> None:
        audit.note(result)  # the request's audit record, when its surface opened one (app.serve.audit)
        name, metrics, gate = model.name, self.metrics, result.gate
        # The histogram is in nats: a regression's epistemic score (a variance, the target's unit²) stays out of
        # it, and its drift is watched by the drift gauges below like any model's.
        if isinstance(result.scores, Scores):
            metrics.epistemic.observe(name, result.scores.epistemic)
        metrics.predictions.labels(name).inc(result.rows)
        counts = Counter(gate.decisions)
        for decision in Decision:
            if counts[decision]:
                metrics.decisions.labels(name, decision.value).inc(counts[decision])
        # A row counts once per component, however many of its features that component named.
        components = Counter(c for reasons in gate.reasons for c in {r.split(":", 1)[0] for r in reasons})
        for component, count in components.items():
            metrics.gate_reasons.labels(name, component).inc(count)
        if self.repository.lookup(name) is not model:
            return  # the drift window follows the version served by default: another would reset it each time
        spec, sha256 = model.manifest.gate, model.manifest.weights.sha256
        references = {"epistemic": spec.epistemic.reference_quantiles, "density": spec.density.reference_quantiles}
        settings = self.settings
        monitor = metrics.drift.monitor(name, sha256, references, settings.drift_window, settings.drift_min_rows)
        windows = {"epistemic": gate.scores[Component.EPISTEMIC], "density": gate.scores[Component.DENSITY]}
        # Only the scored rows' finite scores enter the windows; every row's decision enters the rate.
        monitor.record({k: v[np.isfinite(v)] for k, v in windows.items()}, ~gate.accepted)

    async def load(self, name: str) -> LoadOutcome:
        """(Re)load ``name`` on the repository's loader thread (one load at a time, serving goes on), then count
        and publish it; ModelNotFound when no folder holds it."""
        repository = self.repository
        outcome = await asyncio.get_running_loop().run_in_executor(repository.loader, repository.load, name)
        result = "kept" if outcome.kept else ("failed" if outcome.failed else "loaded")
        self.metrics.model_loads.labels(name, result).inc()
        self.publish_state()
        return outcome

    async def unload(self, name: str) -> None:
        """Take ``name`` out of service (requests in flight finish on it)."""
        repository = self.repository
        await asyncio.get_running_loop().run_in_executor(repository.loader, repository.unload, name)
        self.metrics.model_loads.labels(name, "unloaded").inc()
        self.publish_state()

    def publish_state(self) -> None:
        """After every load and unload: the model info and readiness gauges (a swapped-out version's info goes),
        then whoever listens for the server's readiness (gRPC's health service)."""
        self.metrics.model_info.clear()
        ready: set[str] = set()
        for entry in self.repository.entries():
            if entry.state is not ModelState.READY:
                continue
            ready.add(entry.name)
            m = entry.manifest
            ranks = "/".join("-" if r is None else str(r) for r in m.ranks)
            self.metrics.model_info.labels(entry.name, m.version, m.weights.sha256, m.kind.value, ranks).set(1.0)
        for name in self.repository.names():
            self.metrics.model_ready.labels(name).set(1.0 if name in ready else 0.0)
        for listener in self.readiness_listeners:
            listener(self.repository.ready)
