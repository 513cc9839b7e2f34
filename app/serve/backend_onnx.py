"""The onnxruntime backend: the exported graphs (``sbnn export-onnx``), without torch.

- ``bank``: the frozen-bank graph (``model.onnx``): the export's S samples and bank seed, answers equal to
  the torch backend's ``bank`` sampler (validated on export).
- ``fresh``: the sampling graph (``model-sampling.onnx``) fed with standard noise from numpy's generator
  seeded by the request's seed (or the server's per-batch seed, returned so the answer replays). Any S; with a
  ``tolerance``, chunks of 64 samples until both Monte Carlo errors are within it. The noise comes from numpy,
  not torch, so a seeded fresh answer differs from the torch backend's for the same seed: both are exact
  Monte Carlo estimates of the same predictive.

- ``local``: low-rank kinds, the local-reparameterisation graph (``model-local.onnx``) fed with per-row noise
  (S, N, r) and (S, N, m) a layer from numpy's generator, as ``fresh`` is: r + m normals per row and sample and
  layer instead of a whole weight draw. ``auto`` runs it for a seeded (or otherwise non-bank) request on at most
  the manifest's ``local.max_rows`` rows, the torch engine's own choice, and ``fresh`` above.

Refused here: ``local`` for a model exported without that graph, and a bank request the bank cannot serve
(other S or seed, or adaptive).
Deterministic networks and ensembles have no sampling graph and need none: every request gets their fixed
members from the bank graph, as the torch backend gives them.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.bnn.plan import Plan, PlanRefused, largest_error, piece_samples, run_to_end, summary_rows
from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.files import read_manifest, read_onnx, verified_weights_bytes
from app.checkpoint.manifest import Manifest, NoiseInput, TaskType
from app.checkpoint.noise import NOISE_CHUNK, OUTPUTS, SAMPLING_OUTPUT, NoiseStream
from app.errors import CheckpointError
from app.serve.backend import (
    RATE_ROWS,
    BackendKind,
    Cost,
    Scores,
    estimated_cost,
    seconds_per_row_sample,
)
from app.serve.backend_onnx_heads import OnnxHeadBackend, bank_refusal
from app.serve.predictive_numpy import decompose_numpy, monte_carlo_error_numpy


class OnnxBackend:
    kind = BackendKind.ONNX

    def __init__(self, manifest: Manifest, bank: object, sampling: object | None, local: object | None) -> None:
        self.manifest = manifest
        self.bank = bank
        self.sampling = sampling
        self.local = local
        assert manifest.onnx is not None  # checked by load
        self.onnx = manifest.onnx
        self.seconds_per_row_sample: dict[Sampler, float] = {}  # measured when loading

    @classmethod
    def load(cls, folder: Path) -> OnnxBackend | OnnxHeadBackend:
        """Verify the manifest, the weights' and the graphs' hashes; open onnxruntime sessions; warm them (a
        sequence, text or regression model's bank graph of head outputs: backend_onnx_heads)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CheckpointError(str(folder), "the onnx backend needs onnxruntime: pip install 'sbnn[onnx]'") from exc
        manifest = read_manifest(folder)
        verified_weights_bytes(Path(folder), manifest)  # the export belongs to these very weights
        if manifest.onnx is None:
            raise CheckpointError(str(folder / "manifest.json"), "no ONNX export (run `sbnn export-onnx` first)")
        providers = ["CPUExecutionProvider"]
        bank = ort.InferenceSession(read_onnx(folder, manifest), ort.SessionOptions(), providers=providers)
        if manifest.sequence is not None or manifest.text is not None or manifest.task.type is TaskType.REGRESSION:
            return OnnxHeadBackend.from_session(folder, manifest, bank)
        sampling = None
        if manifest.onnx.sampling is not None:
            graph = read_onnx(folder, manifest, "sampling")
            sampling = ort.InferenceSession(graph, ort.SessionOptions(), providers=providers)
        local = None
        if manifest.onnx.local is not None:
            graph = read_onnx(folder, manifest, "local")
            local = ort.InferenceSession(graph, ort.SessionOptions(), providers=providers)
        backend = cls(manifest, bank, sampling, local)
        x = manifest.preprocessing.typical_input()
        warm_up = [backend.plan(Sampler.BANK, 1, backend.onnx.samples, None, None)]
        for sampler, present in ((Sampler.FRESH, sampling), (Sampler.LOCAL, local)):
            if present is not None:
                warm_up.append(backend.plan(sampler, 1, manifest.default_samples, 0, None))
        for plan in warm_up:
            (scores,) = backend.compute([(x, plan)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({plan.sampler.value}) is not finite")
            if plan.sampler is not Sampler.BANK:  # one piece's samples, for the cost estimates
                plan = Plan(plan.sampler, min(plan.samples, piece_samples(plan.sampler, RATE_ROWS)), 0)
            backend.seconds_per_row_sample[plan.sampler] = seconds_per_row_sample(backend, x, plan)
        return backend

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.onnx.samples, self.onnx.bank_seed)

    def _bank_refusal(self, samples: int, seed: int | None, tolerance: float | None) -> PlanRefused | None:
        refusal = bank_refusal(self.onnx.samples, self.onnx.bank_seed, samples, seed)
        if refusal is not None:
            return refusal
        if tolerance is not None:
            return PlanRefused(
                "tolerance", "adaptive sample counts on the bank need the torch backend; use sampler 'fresh'"
            )
        return None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """The bank graph when the model has nothing to sample (deterministic networks and ensembles: their fixed
        members whatever the options, as with torch), when the bank is asked for, or when the sampler is
        ``auto`` and the bank can serve the request as asked. Otherwise ``auto`` runs the local graph on at
        most ``local.max_rows`` rows and the sampling graph above; ``local`` and ``fresh`` run their graph."""
        bank = Plan(Sampler.BANK, self.onnx.samples, self.onnx.bank_seed)
        if sampler is Sampler.LOCAL and self.local is None:
            reason = (
                "this model's ONNX export has no local-reparameterisation graph (a low-rank model's export "
                "from this version of `sbnn export-onnx` has one)"
            )
            raise PlanRefused("sampler", reason)
        if self.sampling is None:
            return bank
        refusal = self._bank_refusal(samples, seed, tolerance)
        if sampler is Sampler.BANK:
            if refusal is not None:
                raise refusal
            return bank
        if sampler is Sampler.AUTO:
            if refusal is None:
                return bank
            local = self.onnx.local
            sampler = Sampler.LOCAL if local is not None and rows <= local.max_rows else Sampler.FRESH
        return Plan(sampler, samples, seed, tolerance)

    def cost(self, plan: Plan, rows: int) -> Cost:
        return estimated_cost(self.manifest, self.seconds_per_row_sample, plan, rows)

    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        return [run_to_end(self.steps(x, plan.seeded(batch_seed))) for x, plan in jobs]

    def steps(self, x: np.ndarray, plan: Plan) -> Generator[None, None, Scores]:
        if plan.sampler is Sampler.BANK:
            return (yield from self._bank_steps(x))
        assert plan.seed is not None  # the caller seeded it
        if plan.sampler is Sampler.LOCAL:
            assert self.onnx.local is not None and self.local is not None  # plan() refused it otherwise
            graph = SampledGraph(self.local, self.onnx.local.inputs, Sampler.LOCAL)
        else:
            assert self.onnx.sampling is not None and self.sampling is not None  # plan() sent the others to the bank
            graph = SampledGraph(self.sampling, self.onnx.sampling.inputs, Sampler.FRESH)
        return (yield from sampled_steps(graph, x, plan.samples, plan.seed, plan.tolerance))

    def _bank_steps(self, x: np.ndarray) -> Generator[None, None, Scores]:
        """The bank graph a block of rows at a time (its outputs are per row)."""
        samples, block = self.onnx.samples, summary_rows(self.onnx.samples)
        parts = []
        for start in range(0, x.shape[0], block):
            if parts:
                yield
            parts.append(self.bank.run(OUTPUTS, {"x": x[start : start + block]}))  # type: ignore[attr-defined]
        probs, total, aleatoric, mi, std = (np.concatenate(column) for column in zip(*parts, strict=True))
        return Scores(
            plan=Plan(Sampler.BANK, samples, self.onnx.bank_seed),
            probs=probs.astype(np.float64),
            total=total,
            aleatoric=aleatoric,
            epistemic=mi,
            std=std,
            # The bank graph returns summaries only: the probability's error follows from the std; the MI's
            # needs the per-sample probabilities, which this graph does not return.
            mc_error=MonteCarloError(float(std.max()) / math.sqrt(samples), float("nan")),
        )


@dataclass(frozen=True)
class SampledGraph:
    """A graph that takes noise: its onnxruntime session, its noise inputs, and the sampler it implements
    (``fresh``: noise per sample; ``local``: per row and sample)."""

    session: object
    inputs: list[NoiseInput]
    sampler: Sampler


def run_sampled(graph: SampledGraph, x: np.ndarray, samples: int, seed: int, tolerance: float | None = None) -> Scores:
    """``samples`` samples from ``seed`` through a graph that takes noise; with a tolerance, chunk by chunk until
    both Monte Carlo errors are within it (``samples`` is then the cap)."""
    return run_to_end(sampled_steps(graph, x, samples, seed, tolerance))


def sampled_steps(
    graph: SampledGraph, x: np.ndarray, samples: int, seed: int, tolerance: float | None
) -> Generator[None, None, Scores]:
    """``run_sampled`` one piece at a time (``app.bnn.plan``), yielding between pieces."""

    def sample_probabilities(noise: dict[str, np.ndarray]) -> np.ndarray:
        (probs,) = graph.session.run([SAMPLING_OUTPUT], {"x": x, **noise})  # type: ignore[attr-defined]
        return probs  # (S, N, C)

    stream = NoiseStream(graph.inputs, seed, rows=x.shape[0] if graph.sampler is Sampler.LOCAL else None)
    step = NOISE_CHUNK if tolerance is not None else piece_samples(graph.sampler, x.shape[0])
    parts: list[np.ndarray] = []
    for start in range(0, samples, step):
        if parts:
            yield
        # stream.draw gives the same noise as NOISE_CHUNK samples at a time. Fresh pieces are whole chunks; a
        # local piece on many rows may end inside one, which a replay on the same rows repeats.
        parts.append(sample_probabilities(stream.draw(min(step, samples - start))))
        if tolerance is not None:
            yield
            error = yield from _error_steps(np.concatenate(parts))
            if max(error.probability, error.mutual_information) <= tolerance:
                break
    probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
    yield
    block = summary_rows(probs.shape[0])
    blocks, errors = [], []
    for start in range(0, probs.shape[1], block):
        if blocks:
            yield
        blocks.append(decompose_numpy(probs[:, start : start + block]))
        errors.append(monte_carlo_error_numpy(probs[:, start : start + block]))
    mean, total, aleatoric, mi, std = (np.concatenate(column) for column in zip(*blocks, strict=True))
    return Scores(
        plan=Plan(graph.sampler, probs.shape[0], seed, tolerance),
        probs=mean,
        total=total,
        aleatoric=aleatoric,
        epistemic=mi,
        std=std,
        mc_error=largest_error(errors),
    )


def _error_steps(probs: np.ndarray) -> Generator[None, None, MonteCarloError]:
    """``monte_carlo_error_numpy`` a block of rows at a time, yielding between blocks."""
    block = summary_rows(probs.shape[0])
    errors: list[MonteCarloError] = []
    for start in range(0, probs.shape[1], block):
        if errors:
            yield
        errors.append(monte_carlo_error_numpy(probs[:, start : start + block]))
    return largest_error(errors)
