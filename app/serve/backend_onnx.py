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
from pathlib import Path

import numpy as np

from app.bnn.plan import Plan, PlanRefused
from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.files import read_manifest, read_onnx, verified_weights_bytes
from app.checkpoint.manifest import Manifest, NoiseInput
from app.checkpoint.noise import NOISE_CHUNK, OUTPUTS, SAMPLING_OUTPUT, NoiseStream
from app.errors import CheckpointError
from app.serve.backend import BackendKind, Scores
from app.serve.predictive_numpy import decompose_numpy, monte_carlo_error_numpy


class OnnxBackend:
    kind = BackendKind.ONNX

    def __init__(self, manifest: Manifest, bank: object, sampling: object | None) -> None:
        self.manifest = manifest
        self.bank = bank
        self.sampling = sampling
        assert manifest.onnx is not None  # checked by load
        self.onnx = manifest.onnx

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

    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        return [self._run(x, plan.seeded(batch_seed)) for x, plan in jobs]

    def _run(self, x: np.ndarray, plan: Plan) -> Scores:
        if plan.sampler is Sampler.BANK:
            return self._run_bank(x)
        assert self.onnx.sampling is not None and self.sampling is not None  # plan() sent the others to the bank
        assert plan.seed is not None  # compute seeded it
        return run_fresh(self.sampling, self.onnx.sampling.inputs, x, plan.samples, plan.seed, plan.tolerance)

    def _run_bank(self, x: np.ndarray) -> Scores:
        probs, total, aleatoric, mi, std = self.bank.run(OUTPUTS, {"x": x})  # type: ignore[attr-defined]
        samples = self.onnx.samples
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

    def sample_probabilities(noise: dict[str, np.ndarray]) -> np.ndarray:
        (probs,) = session.run([SAMPLING_OUTPUT], {"x": x, **noise})  # type: ignore[attr-defined]
        return probs  # (S, N, C)

    stream = NoiseStream(inputs, seed)
    if tolerance is None:  # one graph run over all the samples: the same chunks, concatenated
        probs = sample_probabilities(stream.draw(samples))
    else:
        parts: list[np.ndarray] = []
        for start in range(0, samples, NOISE_CHUNK):
            parts.append(sample_probabilities(stream.next(min(NOISE_CHUNK, samples - start))))
            error = monte_carlo_error_numpy(np.concatenate(parts))
            if max(error.probability, error.mutual_information) <= tolerance:
                break
        probs = np.concatenate(parts)
    mean, total, aleatoric, mi, std = decompose_numpy(probs)
    return Scores(
        plan=Plan(Sampler.FRESH, probs.shape[0], seed, tolerance),
        probs=mean,
        total=total,
        aleatoric=aleatoric,
        epistemic=mi,
        std=std,
        mc_error=monte_carlo_error_numpy(probs),
    )
