"""Scoring sequences the way the server does: the frozen bank's predictive and the layered gate, per sequence.

The recurrent counterpart of :mod:`app.evaluate.scoring`: training calibrates the gate on these scores and
evaluation reports them, so both use the very weight draws a default request is answered with. A classifier's
predictive is the MLP's :class:`Predictions`; a regression's is :class:`RegressionPredictions`, in the target's
original units (the network is trained on a standardised target, the checkpoint stores its scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from app.bnn.predictive import Predictive, class_probabilities, decompose
from app.bnn.recurrent import BayesianLSTM
from app.bnn.regression import GaussianPredictive
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import Likelihood, Sampler
from app.bnn.transformer import BayesianTransformer
from app.data.preprocess import Preprocessing
from app.data.sequence import SequenceSplit, pad_steps
from app.evaluate.regression_scoring import (  # noqa: F401 - INTERVAL_LEVELS re-exported
    INTERVAL_LEVELS,
    RegressionPredictions,
    check_scale,
    in_target_units,
)
from app.evaluate.scoring import Predictions, ScoredSet, _expand
from app.gate.gate import Density, Screening
from app.gate.sequence import screen_sequences, sequence_starts, summarise_steps


class SequenceBankScorer:
    """The served predictive of a recurrent network, or of a Transformer over token ids: its frozen bank of
    ``samples`` draws from ``bank_seed``.

    ``max_length``: the steps the network sees (longer sequences keep their last ones); ``target_mean`` and
    ``target_std``: the regression target's training scale, undone on every answer (ignored by a classifier);
    ``keep_mixture``: a regression's answers also carry the S Gaussians (``RegressionPredictions.mixture``).
    """

    def __init__(
        self,
        model: BayesianLSTM | BayesianTransformer,
        samples: int,
        bank_seed: int = 0,
        *,
        max_length: int,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        keep_mixture: bool = False,
    ) -> None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.regression = model.spec.likelihood is Likelihood.GAUSSIAN
        if self.regression and model.spec.out_features != 1:
            raise ValueError(f"a regression scorer predicts one target, the model has {model.spec.out_features}")
        check_scale(target_mean, target_std)
        self.engine = SequenceMonteCarloEngine(model, bank_size=samples, bank_seed=bank_seed)
        self.samples = self.engine.bank_size
        self.bank_seed = bank_seed
        self.max_length = max_length
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.keep_mixture = keep_mixture  # a regression's answers carry its S Gaussians (evaluation's metrics)
        self.likelihood = model.spec.likelihood
        self.classes = 2 if model.spec.out_features == 1 else model.spec.out_features
        self.dtype = torch.long if isinstance(model, BayesianTransformer) else torch.float32

    @torch.no_grad()
    def __call__(self, x: np.ndarray, lengths: np.ndarray) -> Predictions | RegressionPredictions:
        """x: (N, T, d) float32 right-padded preprocessed steps, or (N, L) token ids, lengths (N,) in [1, T]
        -> their predictive."""
        if x.shape[0] == 0:
            return self._empty()
        device = self.engine.device
        head, _ = self.engine.run(
            torch.as_tensor(x, dtype=self.dtype, device=device),
            torch.as_tensor(np.asarray(lengths), dtype=torch.long, device=device),
            self.samples,
            None,
            Sampler.BANK,
        )
        if self.regression:
            predictive = GaussianPredictive.from_head(head)
            return in_target_units(predictive, self.target_mean, self.target_std, self.keep_mixture)
        predictive = Predictive(class_probabilities(head, self.likelihood))
        u = decompose(predictive)
        return Predictions(
            probs=predictive.mean.double().cpu().numpy(),
            total=u.total.double().cpu().numpy(),
            aleatoric=u.aleatoric.double().cpu().numpy(),
            epistemic=u.epistemic.double().cpu().numpy(),
            std=u.std.double().cpu().numpy(),
        )

    def _empty(self) -> Predictions | RegressionPredictions:
        if self.regression:
            return RegressionPredictions.empty()
        empty = np.zeros(0)
        return Predictions(np.zeros((0, self.classes)), empty, empty, empty, empty)


def padded_inputs(
    preprocessing: Preprocessing,
    numeric: dict[str, np.ndarray],
    codes: dict[str, np.ndarray],
    lengths: np.ndarray,
    max_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked raw values of ΣT steps (``Preprocessing.raw_values``), lengths (N,) -> x (N, max_length, d)
    float32 (the last ``max_length`` steps, right-padded), the kept lengths (N,) int64, and ``finite`` (N,)
    bool: every kept step encodes finitely (False: a value so far out that float32 overflows; not scored)."""
    steps = len(next(iter(numeric.values())) if numeric else next(iter(codes.values())))
    sequence_starts(lengths, steps)  # the same ValueError as the screen on bad lengths
    with np.errstate(over="ignore", invalid="ignore"):  # a rejected step may not encode finitely
        encoded = preprocessing.encode(numeric, codes)
    x, kept = pad_steps(encoded, lengths, max_length)
    finite = np.isfinite(x).all((1, 2))  # padding is zeros, so this looks at the kept steps only
    return x, kept, finite


def sequence_inputs(
    preprocessing: Preprocessing, frame: Any, lengths: np.ndarray, max_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw long-format ``frame`` (a DataFrame or feature -> ΣT values), lengths (N,) -> (x (N, max_length, d)
    float32, kept lengths (N,), finite (N,)), as :func:`padded_inputs`."""
    numeric, codes = preprocessing.raw_values(frame)
    return padded_inputs(preprocessing, numeric, codes, lengths, max_length)


def score_sequences(
    scorer: SequenceBankScorer,
    screening: Screening,
    density: Density,
    preprocessing: Preprocessing,
    split: SequenceSplit,
) -> ScoredSet:
    """Score a split's sequences through the checkpoint's preprocessing, its bank and the gate's screening and
    density (on :func:`summarise_steps` of the kept steps), as the server would. Every sequence gets a
    predictive (rejected ones too, for evaluation's rankings) except one whose kept steps do not encode
    finitely: NaN there, and in its density."""
    numeric, codes = preprocessing.raw_values(split.frame)
    screen = screen_sequences(screening, numeric, codes, split.lengths)
    x, kept, finite = padded_inputs(preprocessing, numeric, codes, split.lengths, scorer.max_length)
    scores = np.full(finite.size, np.nan)
    scores[finite] = density(summarise_steps(x[finite], kept[finite]))
    return ScoredSet(expand(scorer(x[finite], kept[finite]), finite), scores, screen)


def expand(predictions: Predictions | RegressionPredictions, rows: np.ndarray) -> Predictions | RegressionPredictions:
    """Scores of the sequences where ``rows`` (N,) is True, placed back among all N (NaN elsewhere)."""
    return _expand(predictions, rows)
