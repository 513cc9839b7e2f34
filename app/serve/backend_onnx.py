"""The onnxruntime backend: the exported graphs (``sbnn export-onnx``), without torch.

- ``bank``: the frozen-bank graph (``model.onnx``): the export's S samples and bank seed, answers equal to
  the torch backend's ``bank`` sampler (validated on export).
- ``fresh``: the sampling graph (``model-sampling.onnx``) fed with standard noise from numpy's generator
  seeded by the request's seed (or the server's per-batch seed, returned so the answer replays). Any S; with a
  ``tolerance``, chunks of 64 samples until both Monte Carlo errors are within it. The noise comes from numpy,
  not torch, so a seeded fresh answer differs from the torch backend's for the same seed: both are exact
  Monte Carlo estimates of the same predictive.

Refused here: the ``local`` sampler, and a bank request the bank cannot serve (other S or seed, or adaptive).
Deterministic networks and ensembles have no sampling graph and need none: every request gets their fixed
members from the bank graph, as the torch backend gives them.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path

import numpy as np

from app.bnn.plan import Plan, PlanRefused, largest_error, piece_samples, run_to_end, summary_rows
from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.files import read_manifest, read_onnx, verified_weights_bytes
from app.checkpoint.manifest import Manifest, NoiseInput
from app.checkpoint.noise import NOISE_CHUNK, OUTPUTS, SAMPLING_OUTPUT, NoiseStream
from app.errors import CheckpointError
from app.serve.backend import RATE_ROWS, BackendKind, Cost, Scores, estimated_cost, seconds_per_row_sample
from app.serve.predictive_numpy import decompose_numpy, monte_carlo_error_numpy


class OnnxBackend:
    kind = BackendKind.ONNX

    def __init__(self, manifest: Manifest, bank: object, sampling: object | None) -> None:
        self.manifest = manifest
        self.bank = bank
        self.sampling = sampling
        assert manifest.onnx is not None  # checked by load
        self.onnx = manifest.onnx
        self.seconds_per_row_sample: dict[Sampler, float] = {}  # measured when loading

    @classmethod
    def load(cls, folder: Path) -> OnnxBackend:
        """Verify the manifest, the weights' and the graphs' hashes; open onnxruntime sessions; warm them."""
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
        sampling = None
        if manifest.onnx.sampling is not None:
            graph = read_onnx(folder, manifest, "sampling")
            sampling = ort.InferenceSession(graph, ort.SessionOptions(), providers=providers)
        backend = cls(manifest, bank, sampling)
        x = manifest.preprocessing.typical_input()
        warm_up = [backend.plan(Sampler.BANK, 1, backend.onnx.samples, None, None)]
        if sampling is not None:
            warm_up.append(backend.plan(Sampler.FRESH, 1, manifest.default_samples, 0, None))
        for plan in warm_up:
            (scores,) = backend.compute([(x, plan)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({plan.sampler.value}) is not finite")
            if plan.sampler is Sampler.FRESH:  # one piece's samples, for the cost estimates
                plan = Plan(Sampler.FRESH, min(plan.samples, piece_samples(Sampler.FRESH, RATE_ROWS)), 0)
            backend.seconds_per_row_sample[plan.sampler] = seconds_per_row_sample(backend, x, plan)
        return backend

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.onnx.samples, self.onnx.bank_seed)

    def _bank_refusal(self, samples: int, seed: int | None, tolerance: float | None) -> PlanRefused | None:
        if samples != self.onnx.samples:
            return PlanRefused("samples", f"the ONNX export's bank holds {self.onnx.samples} samples; {samples} asked")
        if seed not in (None, self.onnx.bank_seed):
            reason = f"the ONNX export's bank was drawn with seed {self.onnx.bank_seed}; omit it or send that one"
            return PlanRefused("seed", reason)
        if tolerance is not None:
            return PlanRefused(
                "tolerance", "adaptive sample counts on the bank need the torch backend; use sampler 'fresh'"
            )
        return None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """The bank graph when the model has nothing to sample (deterministic networks and ensembles: their fixed
        members whatever the options, as with torch), when the bank is asked for, or when the sampler is
        ``auto`` and the bank can serve the request as asked; the sampling graph otherwise. ``local`` is refused."""
        if sampler is Sampler.LOCAL:
            raise PlanRefused(
                "sampler", "local reparameterisation needs the torch backend (onnx runs 'bank' or 'fresh')"
            )
        bank = Plan(Sampler.BANK, self.onnx.samples, self.onnx.bank_seed)
        if self.sampling is None:
            return bank
        refusal = self._bank_refusal(samples, seed, tolerance)
        if sampler is Sampler.BANK:
            if refusal is not None:
                raise refusal
            return bank
        if sampler is Sampler.AUTO and refusal is None:
            return bank
        return Plan(Sampler.FRESH, samples, seed, tolerance)

    def cost(self, plan: Plan, rows: int) -> Cost:
        return estimated_cost(self.manifest, self.seconds_per_row_sample, plan, rows)

    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        return [run_to_end(self.steps(x, plan.seeded(batch_seed))) for x, plan in jobs]

    def steps(self, x: np.ndarray, plan: Plan) -> Generator[None, None, Scores]:
        if plan.sampler is Sampler.BANK:
            return (yield from self._bank_steps(x))
        assert self.onnx.sampling is not None and self.sampling is not None  # plan() sent the others to the bank
        assert plan.seed is not None  # the caller seeded it
        inputs = self.onnx.sampling.inputs
        return (yield from fresh_steps(self.sampling, inputs, x, plan.samples, plan.seed, plan.tolerance))

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


def run_fresh(
    session: object, inputs: list[NoiseInput], x: np.ndarray, samples: int, seed: int, tolerance: float | None = None
) -> Scores:
    """``samples`` fresh samples from ``seed`` through a sampling graph's onnxruntime ``session``; with a
    tolerance, chunk by chunk until both Monte Carlo errors are within it (``samples`` is then the cap)."""
    return run_to_end(fresh_steps(session, inputs, x, samples, seed, tolerance))


def fresh_steps(
    session: object, inputs: list[NoiseInput], x: np.ndarray, samples: int, seed: int, tolerance: float | None
) -> Generator[None, None, Scores]:
    """``run_fresh`` one piece at a time (``app.bnn.plan``), yielding between pieces."""

    def sample_probabilities(noise: dict[str, np.ndarray]) -> np.ndarray:
        (probs,) = session.run([SAMPLING_OUTPUT], {"x": x, **noise})  # type: ignore[attr-defined]
        return probs  # (S, N, C)

    stream = NoiseStream(inputs, seed)
    step = NOISE_CHUNK if tolerance is not None else piece_samples(Sampler.FRESH, x.shape[0])
    parts: list[np.ndarray] = []
    for start in range(0, samples, step):
        if parts:
            yield
        # stream.draw gives the same noise as NOISE_CHUNK samples at a time: a piece is whole chunks.
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
        plan=Plan(Sampler.FRESH, probs.shape[0], seed, tolerance),
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
