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

from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.files import read_manifest, read_onnx, verified_weights_bytes
from app.checkpoint.manifest import Manifest, NoiseInput
from app.checkpoint.noise import NOISE_CHUNK, NoiseStream
from app.errors import CheckpointError
from app.serve.backend import BackendKind, InferenceOptions, Scores

OUTPUTS = ["probabilities", "total_entropy", "aleatoric", "mutual_information", "predictive_std"]
SAMPLING_OUTPUT = "sample_probabilities"
MC_ERROR_GROUPS = 8  # batch means for the MI's Monte Carlo error, as the torch engine


def _entropy(probs: np.ndarray) -> np.ndarray:
    """H[p] over the last axis with 0·log 0 = 0: (..., C) -> (...)."""
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(-1)


def summarise(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample probabilities (S, N, C) -> mean (N, C), total, aleatoric, MI, std (N,) each, in nats: the
    numpy twin of ``app.bnn.predictive.decompose`` (float64 throughout)."""
    probs = probs.astype(np.float64)
    mean = probs.mean(0)
    total = _entropy(mean)
    aleatoric = _entropy(probs).mean(0)
    mutual_information = np.maximum(total - aleatoric, 0.0)
    chosen = np.take_along_axis(probs, mean.argmax(-1)[None, :, None], axis=-1)[..., 0]  # (S, N)
    return mean, total, aleatoric, mutual_information, chosen.std(0)


def monte_carlo_error(probs: np.ndarray, groups: int = MC_ERROR_GROUPS) -> MonteCarloError:
    """Largest-over-rows standard errors of p(predicted class) and of the MI (batch means over ``groups``
    groups; NaN below 2 samples per group): the numpy twin of ``app.bnn.engine.monte_carlo_error``."""
    probs = probs.astype(np.float64)
    samples, rows, classes = probs.shape
    if samples < 2:
        return MonteCarloError(0.0, 0.0)
    chosen = np.take_along_axis(probs, probs.mean(0).argmax(-1)[None, :, None], axis=-1)[..., 0]
    se_p = float((chosen.std(0, ddof=1) / math.sqrt(samples)).max())
    size = samples // groups
    if size < 2:
        return MonteCarloError(se_p, float("nan"))
    grouped = probs[: groups * size].reshape(groups, size, rows, classes)
    mi = np.maximum(_entropy(grouped.mean(1)) - _entropy(grouped).mean(1), 0.0)  # (groups, N)
    return MonteCarloError(se_p, float((mi.std(0, ddof=1) / math.sqrt(groups)).max()))


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
        warm_up = [InferenceOptions(samples=backend.onnx.samples, sampler=Sampler.BANK)]
        if sampling is not None:
            warm_up.append(InferenceOptions(samples=manifest.default_samples, seed=0, sampler=Sampler.FRESH))
        for options in warm_up:
            (scores,) = backend.compute([(x, options)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({options.sampler.value}) is not finite")
        return backend

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.onnx.samples, self.onnx.bank_seed)

    def num_samples(self, samples: int) -> int:
        return samples if self.sampling is not None else self.onnx.samples

    def _bank_refusal(self, samples: int, seed: int | None, tolerance: float | None) -> tuple[str, str] | None:
        if samples != self.onnx.samples:
            return "samples", f"the ONNX export's bank holds {self.onnx.samples} samples; {samples} asked"
        if seed not in (None, self.onnx.bank_seed):
            return "seed", f"the ONNX export's bank was drawn with seed {self.onnx.bank_seed}; omit it or send that one"
        if tolerance is not None:
            return "tolerance", "adaptive sample counts on the bank need the torch backend; use sampler 'fresh'"
        return None

    def _uses_bank(self, sampler: Sampler, samples: int, seed: int | None, tolerance: float | None) -> bool:
        """Whether a request runs on the bank graph: the model has nothing to sample, the bank is asked for,
        or the sampler is ``auto`` and the bank can serve the request as asked."""
        if self.sampling is None or sampler is Sampler.BANK:
            return True
        return sampler is Sampler.AUTO and self._bank_refusal(samples, seed, tolerance) is None

    def refuse(
        self, sampler: Sampler, samples: int, seed: int | None, tolerance: float | None
    ) -> tuple[str, str] | None:
        if sampler is Sampler.LOCAL:
            return "sampler", "local reparameterisation needs the torch backend (onnx runs 'bank' or 'fresh')"
        if self.sampling is None:
            return None  # deterministic or ensemble: the same fixed members whatever the options, as with torch
        if sampler is Sampler.BANK:
            return self._bank_refusal(samples, seed, tolerance)
        return None

    def compute(self, jobs: list[tuple[np.ndarray, InferenceOptions]], batch_seed: int) -> list[Scores]:
        results = []
        for x, o in jobs:
            if self._uses_bank(o.sampler, o.samples, o.seed, o.tolerance):
                results.append(self._run_bank(x))
            else:
                seed = batch_seed if o.seed is None else o.seed
                results.append(self._run_fresh(x, o.samples, seed, o.tolerance))
        return results

    def _run_bank(self, x: np.ndarray) -> Scores:
        probs, total, aleatoric, mi, std = self.bank.run(OUTPUTS, {"x": x})  # type: ignore[attr-defined]
        samples = self.onnx.samples
        return Scores(
            probs=probs.astype(np.float64),
            total=total,
            aleatoric=aleatoric,
            epistemic=mi,
            std=std,
            samples=samples,
            seed=self.onnx.bank_seed,
            sampler=Sampler.BANK,
            # The bank graph returns summaries only: the probability's error follows from the std; the MI's
            # needs the per-sample probabilities, which this graph does not return.
            mc_error=MonteCarloError(float(std.max()) / math.sqrt(samples), float("nan")),
        )

    def _run_fresh(self, x: np.ndarray, samples: int, seed: int, tolerance: float | None) -> Scores:
        assert self.onnx.sampling is not None and self.sampling is not None  # refuse() sent the others to the bank
        return run_fresh(self.sampling, self.onnx.sampling.inputs, x, samples, seed, tolerance)


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
            error = monte_carlo_error(np.concatenate(parts))
            if max(error.probability, error.mutual_information) <= tolerance:
                break
        probs = np.concatenate(parts)
    mean, total, aleatoric, mi, std = summarise(probs)
    return Scores(
        probs=mean,
        total=total,
        aleatoric=aleatoric,
        epistemic=mi,
        std=std,
        samples=probs.shape[0],
        seed=seed,
        sampler=Sampler.FRESH,
        mc_error=monte_carlo_error(probs),
    )
