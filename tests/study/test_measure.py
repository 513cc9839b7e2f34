"""Measurements on finished runs (app.study.measure): risk–coverage curves."""

from __future__ import annotations

import numpy as np

from app.study.measure import risk_coverage


def test_risk_coverage_refers_the_most_uncertain_first() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]])  # rows 1 and 3 are wrong
    score = np.array([0.0, 0.9, 0.1, 0.8])  # and the most uncertain
    np.testing.assert_allclose(risk_coverage(labels, probs, score, np.array([0.0, 0.25, 0.5])), [0.5, 1 / 3, 0.0])
    tied = risk_coverage(labels, probs, np.zeros(4), np.array([0.0, 0.25, 0.5]))
    np.testing.assert_allclose(tied, [0.5, 0.5, 0.5])  # ties are referred at random: the error stays the base rate
