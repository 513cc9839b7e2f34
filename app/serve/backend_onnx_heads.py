"""The onnxruntime backend of models whose export returns each bank sample's head outputs, without torch:
sequence (LSTM) models, text (Transformer) models and regression MLPs.

Their graph (``model.onnx``: app.checkpoint.onnx_sequence, onnx_text, onnx_regression) maps the inputs, a
sequence model's padded steps x (N, T, d) and lengths (N,), a text model's token ids (N, L) and lengths (N,),
or an MLP's rows x (N, d), to the head's outputs per bank sample (S, N, k), and a text model's graph also to
the gate density's input, ``features`` (N, d_model); the summaries are numpy's (app.serve.predictive_numpy): a
classifier's as the MLP onnx backend's, a regression's mixture (mean, variances, central intervals) in the
target's unit as ``backend_sequence.regression_scores`` computes it in torch. The export holds the bank only, so
every request is answered from it: ``fresh`` sampling, other sample counts or seeds, and adaptive sampling are
refused with why (the torch backend serves them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from app.bnn.plan import Plan, PlanRefused, run_to_end
from app.bnn.spec import INTERVAL_LEVELS, LayerKind, Likelihood, Sampler
from app.checkpoint.manifest import Manifest
from app.checkpoint.noise import FEATURES_OUTPUT, HEAD_OUTPUT
from app.errors import CheckpointError
from app.serve.backend import (
    AnyScores,
    BackendKind,
    Cost,
    ModelInput,
    RegressionScores,
    Scores,
    SequenceInputs,
    TextInputs,
    check_sequence_servable,
)
from app.serve.predictive_numpy import (
    decompose_numpy,
    gaussian_parameters_numpy,
    mixture_quantile_numpy,
    monte_carlo_error_numpy,
)
from app.serve.texts import typical_texts

BLOCK_FLAT_ROWS = 4096  # an MLP's rows per graph run
BLOCK_ROWS = 64  # sequences per graph run: a piece the data plane may yield between
RATE_SEQUENCES = 8  # as the torch backend's: sequences of the pass each load times


def class_probabilities_numpy(head: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """logits (S, N, k) -> probs (S, N, C) float64 (``app.bnn.predictive.class_probabilities``)."""
    logits = head.astype(np.float64)
    if likelihood is Likelihood.BERNOULLI:
        positive = 1.0 / (1.0 + np.exp(-logits[..., 0]))
        return np.stack([1.0 - positive, positive], axis=-1)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def regression_scores_numpy(head: np.ndarray, plan: Plan, mean: float, std: float) -> RegressionScores:
    """head (S, N, 2) standardised Gaussian outputs -> the mixture's scores in the target's unit."""
    means, variances = gaussian_parameters_numpy(head)
    centre = means.mean(0)
    aleatoric = variances.mean(0) * std**2
    epistemic = np.square(means - centre).mean(0) * std**2
    intervals = {}
    for level in INTERVAL_LEVELS:  # quantiles are equivariant under y = z·std + mean
        low, high = (mixture_quantile_numpy(means, variances, q) for q in ((1 - level) / 2, (1 + level) / 2))
        intervals[level] = (low * std + mean, high * std + mean)
    largest = float(epistemic.max()) if epistemic.size else 0.0
    return RegressionScores(
        plan=plan,
        mean=centre * std + mean,
        total=aleatoric + epistemic,
        aleatoric=aleatoric,
        epistemic=epistemic,
        intervals=intervals,
        mean_error=math.sqrt(largest / max(1, means.shape[0])),
    )


def bank_refusal(bank_samples: int, bank_seed: int, samples: int, seed: int | None) -> PlanRefused | None:
    """Why an export's frozen bank (``bank_samples`` drawn with ``bank_seed``) cannot answer as asked, or None."""
    if samples != bank_samples:
        return PlanRefused("samples", f"the ONNX export's bank holds {bank_samples} samples; {samples} asked")
    if seed not in (None, bank_seed):
        return PlanRefused("seed", f"the ONNX export's bank was drawn with seed {bank_seed}; omit it or send that one")
    return None


class OnnxHeadBackend:
    kind = BackendKind.ONNX

    def __init__(self, manifest: Manifest, session: object) -> None:
        assert manifest.onnx is not None  # load checked it
        self.manifest = manifest
        self.session = session
        self.onnx = manifest.onnx
        schema = manifest.sequence or manifest.text
        self.max_length = None if schema is None else schema.max_length
        self.text = manifest.text is not None
        self.regression = manifest.network.likelihood is Likelihood.GAUSSIAN
        scale = manifest.task.scale
        self.target = (0.0, 1.0) if scale is None else (scale.mean, scale.std)
        self.seconds_per_row_sample: dict[Sampler, float] = {}

    @classmethod
    def from_session(cls, folder: Path, manifest: Manifest, session: object) -> OnnxHeadBackend:
        """The backend of an opened export, warmed up on a typical input and its rate timed."""
        check_sequence_servable(folder, manifest)
        backend = cls(manifest, session)
        plan = backend.plan(Sampler.BANK, 1, backend.onnx.samples, None, None)
        (scores,) = backend.compute([(backend.typical_input(1), plan)], batch_seed=0)
        if not np.isfinite(scores.total).all():
            raise CheckpointError(str(folder), "warm-up prediction (bank) is not finite")
        many = backend.typical_input(RATE_SEQUENCES)
        started = time.perf_counter()
        backend.compute([(many, plan)], batch_seed=0)
        backend.seconds_per_row_sample[Sampler.BANK] = (time.perf_counter() - started) / (RATE_SEQUENCES * plan.samples)
        return backend

    def typical_input(self, rows: int) -> ModelInput:
        """``rows`` typical rows, sequences of max_length typical steps (the training medians, first
        categories), or texts of max_length tokens."""
        if self.text:
            assert self.max_length is not None  # a text manifest has its max length
            return typical_texts(rows, self.max_length)
        step = self.manifest.preprocessing.typical_input()  # (1, d)
        if self.max_length is None:
            return np.repeat(step, rows, axis=0)
        x = np.repeat(step[None], rows, axis=0).repeat(self.max_length, axis=1)
        return SequenceInputs(x.astype(np.float32), np.full(rows, self.max_length, dtype=np.int64))

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.onnx.samples, self.onnx.bank_seed)

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """The bank, whatever ``auto`` or ``bank`` asks, when it can serve the request as asked; else refused. A
        deterministic network or an ensemble has nothing to sample: its fixed members answer every request, as
        on the torch backend."""
        if tolerance is not None:
            raise PlanRefused("tolerance", "adaptive sampling is not available for this model; send samples")
        if self.manifest.kind in (LayerKind.DETERMINISTIC, LayerKind.ENSEMBLE):
            return Plan(Sampler.BANK, self.onnx.samples, self.onnx.bank_seed)
        if sampler in (Sampler.FRESH, Sampler.LOCAL):
            reason = "this model's ONNX export holds its frozen bank only; that sampler needs the torch backend"
            raise PlanRefused("sampler", reason)
        refusal = bank_refusal(self.onnx.samples, self.onnx.bank_seed, samples, seed)
        if refusal is not None:
            raise refusal
        return Plan(Sampler.BANK, self.onnx.samples, self.onnx.bank_seed)

    def cost(self, plan: Plan, rows: int) -> Cost:
        """Measured seconds per sequence and sample; memory: a block's outputs and the summary's (S, N) arrays."""
        seconds = rows * plan.samples * self.seconds_per_row_sample.get(plan.sampler, 0.0)
        return Cost(seconds, 8 * plan.samples * rows * (self.manifest.network.out_features + 4))

    def compute(self, jobs: list[tuple[ModelInput, Plan]], batch_seed: int) -> list[AnyScores]:
        return [run_to_end(self.steps(inputs, plan.seeded(batch_seed))) for inputs, plan in jobs]

    def steps(self, inputs: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """A block of rows, sequences or texts per graph run, yielding between blocks, then the summary."""
        name = "x"
        if isinstance(inputs, SequenceInputs):
            x = np.ascontiguousarray(inputs.x, dtype=np.float32)
            lengths: np.ndarray | None = np.ascontiguousarray(inputs.lengths, dtype=np.int64)
            block = BLOCK_ROWS
        elif isinstance(inputs, TextInputs):
            name, x = "ids", np.ascontiguousarray(inputs.ids, dtype=np.int64)
            lengths, block = np.ascontiguousarray(inputs.lengths, dtype=np.int64), BLOCK_ROWS
        else:
            x, lengths, block = np.ascontiguousarray(inputs, dtype=np.float32), None, BLOCK_FLAT_ROWS
        outputs = [HEAD_OUTPUT, FEATURES_OUTPUT] if self.text else [HEAD_OUTPUT]
        parts: list[list[np.ndarray]] = []
        for start in range(0, x.shape[0], block):
            if parts:
                yield
            feed = {name: x[start : start + block]}
            if lengths is not None:
                feed["lengths"] = lengths[start : start + block]
            parts.append(self.session.run(outputs, feed))  # type: ignore[attr-defined]
        head = np.concatenate([p[0] for p in parts], axis=1)  # (S, N, k)
        yield
        if self.regression:
            return regression_scores_numpy(head, plan, *self.target)
        probs = class_probabilities_numpy(head, self.manifest.network.likelihood)
        mean, total, aleatoric, mi, std = decompose_numpy(probs)
        features = np.concatenate([p[1] for p in parts]).astype(np.float64) if self.text else None
        return Scores(plan, mean, total, aleatoric, mi, std, monte_carlo_error_numpy(probs), features)
