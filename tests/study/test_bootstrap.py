"""Paired bootstrap intervals over test rows and seeds (app.study.bootstrap) and the three verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from app.study.bootstrap import Interval, paired_interval, rmse


def _ratio(x: float, y: float) -> float:
    return x / y - 1.0


def test_the_same_predictions_give_a_zero_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    seeds = [y + rng.normal(0, 0.3, 500) for _ in range(3)]
    found = paired_interval(y, seeds, seeds, rmse, _ratio, resamples=200)
    # Same rows and same seed draws for both would be exactly 0; the seeds are drawn apart for each kind.
    assert found.estimate == 0.0 and found.low <= 0.0 <= found.high


def test_clear_gaps_are_decided_and_small_samples_cannot_tell() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=2000)
    worse = [y + rng.normal(0, 0.5, 2000) for _ in range(3)]
    better = [y + rng.normal(0, 0.3, 2000) for _ in range(3)]
    far = paired_interval(y, worse, better, rmse, _ratio, resamples=300)
    assert far.estimate == pytest.approx(0.5 / 0.3 - 1, abs=0.05) and far.low > 0.05
    assert far.verdict(0.05, at_most=True) == "does not hold"
    near = paired_interval(y, better, worse, rmse, _ratio, resamples=300)
    assert near.verdict(0.05, at_most=True) == "holds"
    y20 = rng.normal(size=20)  # two kinds of the same error, 20 rows: the interval spans the margin
    kind_a, kind_b = ([y20 + rng.normal(0, 0.3, 20) for _ in range(3)] for _ in range(2))
    small = paired_interval(y20, kind_a, kind_b, rmse, _ratio)
    assert small.low < 0.05 < small.high and small.verdict(0.05, at_most=True) == "cannot tell at this n"


def test_a_verdict_reads_the_whole_interval_on_either_side() -> None:
    assert Interval(0.01, -0.01, 0.03, 0.95).verdict(-0.02, at_most=False) == "holds"
    assert Interval(-0.05, -0.07, -0.03, 0.95).verdict(-0.02, at_most=False) == "does not hold"
    assert Interval(-0.02, -0.04, 0.0, 0.95).verdict(-0.02, at_most=False) == "cannot tell at this n"


def test_rank_auroc_is_sklearns_with_ties_and_weights() -> None:
    from sklearn.metrics import roc_auc_score

    from app.evaluate.novelty import risk_weights, weighted_auroc
    from app.study.bootstrap import rank_auroc

    rng = np.random.default_rng(2)
    labels = (rng.uniform(size=900) < 0.3).astype(int)
    scores = np.round(rng.normal(size=900) + labels, 1)  # rounded: many ties
    weights = rng.uniform(0.1, 2.0, 900)
    assert rank_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert rank_auroc(labels, scores, weights) == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12
    )
    id_risk, ood_risk = rng.uniform(0, 0.6, 500), rng.uniform(0.2, 0.9, 300)
    id_scores, ood_scores = rng.normal(size=500), rng.normal(size=300) + 0.3
    w, kept = risk_weights(id_risk, ood_risk)
    pooled = np.r_[np.zeros(500), np.ones(int(kept.sum()))]
    found = rank_auroc(pooled, np.r_[id_scores, ood_scores[kept]], np.r_[w, np.ones(int(kept.sum()))])
    assert found == pytest.approx(weighted_auroc(id_scores, ood_scores[kept], w), abs=1e-12)
