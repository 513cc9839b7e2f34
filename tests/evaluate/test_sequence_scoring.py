"""Scoring sequences as the server does (app.evaluate.sequence_scoring): the bank's predictive and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from app.bnn.recurrent import BayesianLSTM
from app.data.preprocess import Preprocessing, infer_feature_specs
from app.data.sequence import SequenceSplit
from app.evaluate.scoring import Predictions
from app.evaluate.sequence_scoring import (
    INTERVAL_LEVELS,
    RegressionPredictions,
    SequenceBankScorer,
    score_sequences,
    sequence_inputs,
)
from app.gate.gate import Density, Screening
from app.gate.sequence import summarise_steps
from app.train.config import TrainConfig
from app.train.sequence_loop import build_sequence_spec, train_sequence

MAX_LENGTH = 4
FEATURES = ["a", "b", "site"]
CONFIG = TrainConfig(hidden=[8], rank=3, epochs=2, kl_warmup_epochs=1, patience=5, val_samples=4, device="cpu")


def _split(rows: int, seed: int) -> SequenceSplit:
    """Sequences of 1–6 steps (a, b numeric, site categorical); the target is 3·a at the last step + 10."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, size=rows).astype(np.int64)
    steps = int(lengths.sum())
    frame = pd.DataFrame(
        {"a": rng.normal(size=steps), "b": rng.normal(5.0, 2.0, size=steps), "site": rng.choice(["x", "y"], steps)}
    )
    y = 3.0 * frame["a"].to_numpy()[np.cumsum(lengths) - 1] + 10.0
    return SequenceSplit(frame, lengths, y, np.array([f"s{i}" for i in range(rows)]))


TRAIN, VAL = _split(120, seed=0), _split(40, seed=1)
SPECS = infer_feature_specs(TRAIN.frame, FEATURES)
PREPROCESSING = Preprocessing.fit(TRAIN.frame, SPECS)
Y_MEAN, Y_STD = float(TRAIN.y.mean()), float(TRAIN.y.std())


def _inputs(split: SequenceSplit) -> tuple[np.ndarray, np.ndarray]:
    x, kept, finite = sequence_inputs(PREPROCESSING, split.frame, split.lengths, MAX_LENGTH)
    assert finite.all()
    return x, kept


@pytest.fixture(scope="module")
def regression() -> BayesianLSTM:
    (x, lengths), (xv, lv) = _inputs(TRAIN), _inputs(VAL)
    z, zv = (TRAIN.y - Y_MEAN) / Y_STD, (VAL.y - Y_MEAN) / Y_STD
    return train_sequence(x, lengths, z, xv, lv, zv, None, CONFIG).model


def _untrained(classes: int | None) -> BayesianLSTM:
    spec = build_sequence_spec(CONFIG, PREPROCESSING.n_outputs, classes)
    return BayesianLSTM(spec, generator=torch.Generator().manual_seed(0)).eval()


def test_sequence_inputs_pad_the_last_steps() -> None:
    x, kept, finite = sequence_inputs(PREPROCESSING, VAL.frame, VAL.lengths, MAX_LENGTH)
    assert x.shape == (len(VAL), MAX_LENGTH, PREPROCESSING.n_outputs) and x.dtype == np.float32
    np.testing.assert_array_equal(kept, np.minimum(VAL.lengths, MAX_LENGTH))
    steps = PREPROCESSING.transform(VAL.frame)
    last = np.cumsum(VAL.lengths) - 1
    np.testing.assert_array_equal(x[np.arange(len(VAL)), kept - 1], steps[last])  # the last step is the newest
    assert finite.all()


def test_a_regression_is_answered_in_the_targets_units(regression: BayesianLSTM) -> None:
    x, lengths = _inputs(VAL)
    scaled = SequenceBankScorer(regression, 16, max_length=MAX_LENGTH, target_mean=Y_MEAN, target_std=Y_STD)
    unit = SequenceBankScorer(regression, 16, max_length=MAX_LENGTH)
    assert scaled.regression and (scaled.samples, scaled.bank_seed) == (16, 0)
    p, z = scaled(x, lengths), unit(x, lengths)
    assert isinstance(p, RegressionPredictions) and isinstance(z, RegressionPredictions)
    np.testing.assert_array_equal(p.mean, z.mean * Y_STD + Y_MEAN)
    for name in ("aleatoric", "epistemic", "total"):
        np.testing.assert_allclose(getattr(p, name), getattr(z, name) * Y_STD**2, rtol=1e-12)
    for level in INTERVAL_LEVELS:
        np.testing.assert_allclose(p.intervals[level][0], z.intervals[level][0] * Y_STD + Y_MEAN, rtol=1e-12)
    np.testing.assert_array_equal(p.total, p.aleatoric + p.epistemic)
    assert (p.epistemic > 0).all() and p.mean.dtype == np.float64 and p.mean.shape == (len(VAL),)
    assert set(p.intervals) == set(INTERVAL_LEVELS)
    previous = None
    for level in sorted(INTERVAL_LEVELS):
        low, high = p.intervals[level]
        assert (low < p.mean).all() and (p.mean < high).all()
        if previous is not None:
            assert (low < previous[0]).all() and (high > previous[1]).all()  # wider at a higher level
        previous = (low, high)


def test_the_bank_answers_bitwise_the_same(regression: BayesianLSTM) -> None:
    x, lengths = _inputs(VAL)
    scorer = SequenceBankScorer(regression, 8, bank_seed=3, max_length=MAX_LENGTH, target_mean=2.0, target_std=5.0)
    first, second = scorer(x, lengths), scorer(x, lengths)
    for name in ("mean", "total", "aleatoric", "epistemic"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    for level in INTERVAL_LEVELS:
        np.testing.assert_array_equal(first.intervals[level][1], second.intervals[level][1])
    banks = [SequenceBankScorer(regression, 8, bank_seed=s, max_length=MAX_LENGTH)(x, lengths) for s in (3, 4)]
    assert not np.array_equal(banks[0].epistemic, banks[1].epistemic)  # another seed, other draws


@pytest.mark.parametrize("classes", [2, 3])
def test_a_classifier_gives_the_mlps_predictions(classes: int) -> None:
    x, lengths = _inputs(VAL)
    scorer = SequenceBankScorer(_untrained(classes), 8, max_length=MAX_LENGTH)
    p = scorer(x, lengths)
    assert not scorer.regression and isinstance(p, Predictions)
    assert p.probs.shape == (len(VAL), classes)
    np.testing.assert_allclose(p.probs.sum(1), 1.0, rtol=1e-6)
    assert (p.epistemic >= 0).all() and (p.aleatoric <= p.total + 1e-6).all()


def test_no_sequences_give_empty_answers(regression: BayesianLSTM) -> None:
    x, lengths = np.zeros((0, MAX_LENGTH, PREPROCESSING.n_outputs), np.float32), np.zeros(0, np.int64)
    p = SequenceBankScorer(regression, 4, max_length=MAX_LENGTH)(x, lengths)
    assert p.mean.shape == p.epistemic.shape == p.intervals[0.9][0].shape == (0,)
    c = SequenceBankScorer(_untrained(3), 4, max_length=MAX_LENGTH)(x, lengths)
    assert c.probs.shape == (0, 3) and c.epistemic.shape == (0,)


def test_bad_scorer_arguments_are_refused(regression: BayesianLSTM) -> None:
    with pytest.raises(ValueError, match="max_length"):
        SequenceBankScorer(regression, 4, max_length=0)
    with pytest.raises(ValueError, match="target_std"):
        SequenceBankScorer(regression, 4, max_length=MAX_LENGTH, target_std=0.0)


def _density() -> Density:
    x, lengths = _inputs(TRAIN)
    summary = summarise_steps(x, lengths)
    covariance = np.cov(summary, rowvar=False) + 1e-3 * np.eye(summary.shape[1])
    return Density(summary.mean(0), np.linalg.inv(covariance))


def test_score_sequences_end_to_end(regression: BayesianLSTM) -> None:
    frame = VAL.frame.copy()
    ends = np.cumsum(VAL.lengths)
    long_one = int(np.flatnonzero(VAL.lengths > MAX_LENGTH)[0])
    frame.loc[ends[0] - 1, "a"] = 1e300  # beyond 1e6 SD, and beyond float32 once encoded: not scorable
    frame.loc[ends[long_one] - VAL.lengths[long_one], "a"] = 1e300  # the same, in a step the pad cuts
    split = SequenceSplit(frame, VAL.lengths, VAL.y, VAL.ids)
    scorer = SequenceBankScorer(regression, 8, max_length=MAX_LENGTH, target_mean=Y_MEAN, target_std=Y_STD)
    scored = score_sequences(scorer, Screening(SPECS, PREPROCESSING), _density(), PREPROCESSING, split)
    p = scored.predictions
    assert isinstance(p, RegressionPredictions)
    assert p.mean.shape == scored.density.shape == scored.screen.rejected.shape == (len(VAL),)
    assert p.intervals[0.95][0].shape == (len(VAL),)
    # Both impossible values reject their sequence (the screen sees every step sent, the cut ones too) ...
    assert np.flatnonzero(scored.screen.rejected).tolist() == sorted({0, long_one})
    assert scored.screen.reasons[0] == ["bounds:a"]
    # ... but only the kept one leaves it unscored: NaN predictive and density there, finite elsewhere.
    unscored = np.arange(len(VAL)) == 0
    assert np.isnan(scored.density[unscored]).all() and np.isfinite(scored.density[~unscored]).all()
    for values in (p.mean, p.total, p.epistemic, *p.intervals[0.5]):
        assert np.isnan(values[unscored]).all() and np.isfinite(values[~unscored]).all()
    # The other sequences score as on their own (up to the float rounding of another batch).
    x, lengths = _inputs(VAL)
    alone = scorer(x[~unscored], lengths[~unscored])
    np.testing.assert_allclose(p.mean[~unscored], alone.mean, rtol=1e-5)
