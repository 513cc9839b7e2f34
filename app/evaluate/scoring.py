"""Scoring a table the way the server does: the frozen bank's predictive and the layered gate, row by row.

Training calibrates the gate on these scores and evaluation reports them, so the thresholds and the figures
come from the very weight draws a default request is answered with (the server's bank: S = the model's
``default_samples``, seed ``bank_seed``, 0 unless ``SBNN_BANK_SEED`` says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.bnn.engine import CostModel, MonteCarloEngine
from app.bnn.network import BayesianMLP
from app.bnn.predictive import decompose
from app.bnn.spec import Sampler
from app.data.preprocess import Preprocessing
from app.evaluate.regression_scoring import RegressionBankScorer, RegressionPredictions
from app.gate.gate import Density, Gate, GateResult, Screen, Screening

# The bank sampler never consults the cost model; a fixed one spares the engine its timing at build.
_UNUSED_COST = CostModel(seconds_per_normal=1e-9, seconds_per_mac=1e-10)


@dataclass(frozen=True)
class Predictions:
    """The predictive of N rows: probs (N, C); total, aleatoric, epistemic (mutual information) and the std of
    the predicted class's probability (N,), in nats."""

    probs: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    std: np.ndarray


class BankScorer:
    """The served predictive of a network: its frozen bank of ``samples`` draws from ``bank_seed``."""

    def __init__(self, model: BayesianMLP, samples: int, bank_seed: int = 0) -> None:
        self.engine = MonteCarloEngine(model, bank_size=samples, bank_seed=bank_seed, cost=_UNUSED_COST)
        self.samples = self.engine.bank_size
        self.bank_seed = bank_seed
        self.classes = 2 if model.spec.out_features == 1 else model.spec.out_features

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> Predictions:
        """x: (N, d) float32 preprocessed rows -> their predictive."""
        if x.shape[0] == 0:
            empty = np.zeros(0)
            return Predictions(np.zeros((0, self.classes)), empty, empty, empty, empty)
        device = self.engine.device
        result = self.engine.run(torch.as_tensor(x, device=device), self.samples, None, Sampler.BANK)
        u = decompose(result.predictive)
        return Predictions(
            probs=result.predictive.mean.double().cpu().numpy(),
            total=u.total.double().cpu().numpy(),
            aleatoric=u.aleatoric.double().cpu().numpy(),
            epistemic=u.epistemic.double().cpu().numpy(),
            std=u.std.double().cpu().numpy(),
        )


@dataclass(frozen=True)
class ScoredSet:
    """One table's scores before any threshold: the predictive of every row (rejected rows too, so that
    evaluation can rank them by every score; a row whose input is not finite gets NaN), its input density,
    and the screen (bounds and support)."""

    predictions: Predictions | RegressionPredictions
    density: np.ndarray
    screen: Screen


@dataclass(frozen=True)
class GatedSet(ScoredSet):
    """A :class:`ScoredSet` with the gate's answer (in which rejected rows carry no scores, as on the wire)
    and the combined gate score (:meth:`Gate.ranking`)."""

    result: GateResult
    ranking: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.ranking.size)


def score_set(
    scorer: BankScorer | RegressionBankScorer,
    screening: Screening,
    density: Density,
    preprocessing: Preprocessing,
    columns: Any,
) -> ScoredSet:
    """Score raw ``columns`` (a DataFrame or feature -> values) through the checkpoint's preprocessing, its bank
    and the gate's screening and density, as the server would."""
    numeric, codes = preprocessing.raw_values(columns)
    screen = screening.screen(numeric, codes)
    with np.errstate(over="ignore", invalid="ignore"):  # a rejected row may not encode finitely
        x = preprocessing.encode(numeric, codes)
    finite = np.isfinite(x).all(1)
    scores = np.full(finite.size, np.nan)
    scores[finite] = density(x[finite])
    return ScoredSet(_expand(scorer(x[finite]), finite), scores, screen)


def gated(gate: Gate, scored: ScoredSet) -> GatedSet:
    """The gate's answer for a scored set, and its ranking (a row beyond float32, NaN scores, ranks as far as
    any score can)."""
    density, epistemic = scored.density, scored.predictions.epistemic
    return GatedSet(
        scored.predictions,
        density,
        scored.screen,
        gate.decide(scored.screen, density, epistemic),
        gate.ranking(scored.screen, density, epistemic),
    )


def gate_set(
    scorer: BankScorer | RegressionBankScorer, gate: Gate, preprocessing: Preprocessing, columns: Any
) -> GatedSet:
    """Score raw ``columns`` through the checkpoint's preprocessing, its bank and its gate, as the server would
    answer them."""
    return gated(gate, score_set(scorer, gate.screening, gate.density, preprocessing, columns))


def _expand(predictions: Predictions | RegressionPredictions, rows: np.ndarray) -> Predictions | RegressionPredictions:
    """Scores of the rows where ``rows`` is True, placed back among all rows (NaN elsewhere)."""
    if isinstance(predictions, RegressionPredictions):
        return predictions.expand(rows)

    def place(values: np.ndarray) -> np.ndarray:
        out = np.full((rows.size, *values.shape[1:]), np.nan)
        out[rows] = values
        return out

    return Predictions(*(place(getattr(predictions, f)) for f in ("probs", "total", "aleatoric", "epistemic", "std")))
