"""What the batching engine asks of a model's backend, and what a backend answers (no torch here).

Two backends: ``torch`` (``app.serve.backend_torch``: the Monte Carlo engine with every sampler) and ``onnx``
(``app.serve.backend_onnx``: onnxruntime on the exported frozen-bank and sampling graphs, for torch-free images).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.manifest import Manifest


class BackendKind(str, Enum):
    AUTO = "auto"  # torch when it is installed, else onnx
    TORCH = "torch"
    ONNX = "onnx"


@dataclass(frozen=True)
class InferenceOptions:
    """What a request asks of the Monte Carlo pass."""

    samples: int  # the sample count, or the cap when ``tolerance`` is set
    seed: int | None = None
    sampler: Sampler = Sampler.AUTO
    tolerance: float | None = None  # adaptive: stop once both MC standard errors are at most this


@dataclass(frozen=True)
class Scores:
    """One request's predictive: probs (N, C) and each uncertainty (N,) in nats."""

    probs: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    std: np.ndarray
    samples: int
    seed: int
    sampler: Sampler
    mc_error: MonteCarloError


class Backend(Protocol):
    kind: BackendKind
    manifest: Manifest

    @property
    def default_bank(self) -> tuple[int, int] | None:
        """(samples, seed) of the frozen bank a default request is answered with; None without a bank."""

    def num_samples(self, samples: int) -> int:
        """The samples a request for ``samples`` gets (fixed for deterministic models and ensembles)."""

    def refuse(
        self, sampler: Sampler, samples: int, seed: int | None, tolerance: float | None
    ) -> tuple[str, str] | None:
        """(option, reason) when this backend cannot serve these options (option: sampler, samples, seed or
        tolerance), or None."""

    def compute(self, jobs: list[tuple[np.ndarray, InferenceOptions]], batch_seed: int) -> list[Scores]:
        """Score a batch of requests (x: (N, d) float32 each) on the compute thread."""
