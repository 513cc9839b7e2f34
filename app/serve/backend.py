"""What the batching engine asks of a model's backend, and what a backend answers (no torch here).

Two backends: ``torch`` (``app.serve.backend_torch``: the Monte Carlo engine with every sampler) and ``onnx``
(``app.serve.backend_onnx``: onnxruntime on the exported frozen-bank and sampling graphs, for torch-free images).
Both decide a request's sampler, sample count and seed in one place, ``plan``, and run that plan as decided.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from app.bnn.plan import Plan, peak_bytes
from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError


class BackendKind(str, Enum):
    AUTO = "auto"  # torch when it is installed, else onnx
    TORCH = "torch"
    ONNX = "onnx"


LENGTHS_INPUT = "lengths"  # /v2's input of each sequence's steps (api/v2_sequences.py)
STEPS_INPUT = "steps"  # /v2's [N, T, F] input of the numeric per-step features, packed


def check_sequence_servable(folder: object, manifest: Manifest) -> None:
    """CheckpointError for a sequence model whose feature names clash with the /v2 wire format: its inputs are
    the per-step features plus ``lengths``, so no feature may be called that."""
    if manifest.sequence is not None and any(f.name == LENGTHS_INPUT for f in manifest.features):
        raise CheckpointError(
            f"{folder}/manifest.json", f"a sequence model with a feature named '{LENGTHS_INPUT}', /v2's lengths input"
        )


@dataclass(frozen=True)
class SequenceInputs:
    """A request's sequences as the network takes them: x (N, T, d) float32 right-padded preprocessed steps (T:
    the model's max_length) and lengths (N,) int64, each in [1, T]. ``shape`` is x's, so the batching engine
    counts its rows as it counts a flat request's."""

    x: np.ndarray
    lengths: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)


@dataclass(frozen=True)
class TextInputs:
    """A request's texts as the network takes them: ids (N, L) int64, the tokenizer's ids right-padded with
    [PAD] (position 0 the [CLS] token; L the longest kept text, at most the model's max_length) and lengths
    (N,) int64, each in [1, L]."""

    ids: np.ndarray
    lengths: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ids.shape)


ModelInput = np.ndarray | SequenceInputs | TextInputs  # (N, d) float32 rows, sequences, or texts


@dataclass(frozen=True)
class Scores:
    """One request's predictive, probs (N, C) and each uncertainty (N,) in nats, and the plan that drew it
    (``plan.samples``: the samples drawn; ``plan.seed``: the seed that replays it); ``features`` (N, d) float64:
    the gate density's input when the network computes it (a text model's pooled encoder state), else None."""

    plan: Plan
    probs: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    std: np.ndarray
    mc_error: MonteCarloError
    features: np.ndarray | None = None


@dataclass(frozen=True)
class RegressionScores:
    """One request's Gaussian-mixture predictive of a regression target, in the target's unit (the network's
    standardised outputs mapped back: y = z·std + mean, variances · std²), float64 (N,) each: the mean, the
    total, aleatoric and epistemic variances (total = aleatoric + epistemic; epistemic is the gate's score),
    ``intervals``: level -> (low (N,), high (N,)) central intervals of the mixture; ``mean_error``: the largest
    over rows of the Monte Carlo standard error of the mean, sqrt(epistemic / S). Any architecture's regression
    (LSTM now, an MLP later) answers with this."""

    plan: Plan
    mean: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    intervals: dict[float, tuple[np.ndarray, np.ndarray]]
    mean_error: float


AnyScores = Scores | RegressionScores


@dataclass(frozen=True)
class Cost:
    """A request's estimated compute seconds on this server (rates measured when the model loaded) and peak
    memory in bytes beyond the model's own (``app.bnn.plan.peak_bytes``), for the worst case of its plan."""

    seconds: float
    bytes: int


class Backend(Protocol):
    kind: BackendKind
    manifest: Manifest

    @property
    def default_bank(self) -> tuple[int, int] | None:
        """(samples, seed) of the frozen bank a default request is answered with; None without a bank."""

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """The plan a request of N = ``rows`` rows gets for these options (samples: the cap when ``tolerance``
        is set); PlanRefused(option, reason) when this backend cannot serve them."""

    def cost(self, plan: Plan, rows: int) -> Cost:
        """What a request of N = ``rows`` rows planned as ``plan`` is estimated to take (an adaptive plan: its cap)."""

    def compute(self, jobs: list[tuple[ModelInput, Plan]], batch_seed: int) -> list[AnyScores]:
        """Score a batch of requests (x: (N, d) float32 each, or sequences, with its plan) on the compute
        thread; a plan without a seed takes ``batch_seed``. Each answer equals ``steps`` of that request alone."""

    def steps(self, x: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """Score one request with a seeded plan piece by piece (``app.bnn.plan``): yields between pieces, so the
        caller may run other requests or stop, and returns its scores."""


RATE_ROWS = 256  # the rows of the pass each sampler's rate is measured on, when a model loads


def seconds_per_row_sample(backend: Backend, x: np.ndarray, plan: Plan, repeats: int = 2) -> float:
    """The rate of ``plan``'s sampler: the fastest of ``repeats`` runs of ``plan`` on the row ``x`` (1, d) repeated
    to RATE_ROWS rows, per row and sample (``compute`` answers host arrays, so the device's work is in it)."""
    rows = np.repeat(x, RATE_ROWS, axis=0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backend.compute([(rows, plan)], batch_seed=0)
        best = min(best, time.perf_counter() - start)
    return best / (RATE_ROWS * plan.samples)


def estimated_cost(manifest: Manifest, rates: dict[Sampler, float], plan: Plan, rows: int) -> Cost:
    """``Backend.cost`` from the measured ``rates`` (seconds per row and sample, by sampler) and the manifest."""
    widest = max(m for _, m in manifest.network.layer_shapes())
    seconds = rows * plan.samples * rates.get(plan.sampler, 0.0)
    return Cost(seconds, peak_bytes(plan, rows, len(manifest.task.labels), widest))
