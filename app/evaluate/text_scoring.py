"""Scoring texts the way the server does: the screen, the density of the pooled encoder state and the frozen
bank's predictive, per text. Training calibrates the text gate on these scores and evaluation reports them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from app.bnn.transformer import BayesianTransformer, TransformerSample
from app.data.tokenizer import EncodedTexts
from app.evaluate.scoring import ScoredSet
from app.evaluate.sequence_scoring import SequenceBankScorer
from app.gate.gate import Density
from app.gate.text import TextScreening

FEATURE_BLOCK = 512  # texts per pass of the density's features


class TokenIds(Protocol):
    """Tokenised texts: ids (N, L) int64 right-padded, lengths (N,) int64 (``EncodedTexts``, the server's
    ``TextInputs``)."""

    ids: np.ndarray
    lengths: np.ndarray


def encoder_features(
    model: BayesianTransformer,
    encoded: TokenIds,
    block: int = FEATURE_BLOCK,
    mean: TransformerSample | None = None,
) -> np.ndarray:
    """The density's input for encoded texts: (N, d_model) float64 pooled encoder states under the posterior mean
    (``mean``: ``model.mean_sample()``, drawn here when not given), ``block`` texts a pass. Training, evaluation
    and the torch server all compute it here."""
    device = model.positions.device
    mean = model.mean_sample() if mean is None else mean
    parts = [
        model.pooled_features(
            torch.as_tensor(encoded.ids[start : start + block], device=device),
            torch.as_tensor(encoded.lengths[start : start + block], device=device),
            mean,
        )
        for start in range(0, len(encoded.lengths), block)
    ]
    return torch.cat(parts).double().cpu().numpy() if parts else np.zeros((0, model.spec.d_model))


def score_texts(
    scorer: SequenceBankScorer, screening: TextScreening, density: Density, encoded: EncodedTexts
) -> ScoredSet:
    """Score encoded texts as the server does: the screen, the density of the pooled encoder state and the
    bank's predictive (every text, rejected ones too, for evaluation's rankings)."""
    model = scorer.engine.model
    assert isinstance(model, BayesianTransformer)
    screen = screening.screen(encoded)
    scores = density(encoder_features(model, encoded))
    return ScoredSet(scorer(encoded.ids, encoded.lengths), scores, screen)
