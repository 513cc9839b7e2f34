"""OOD figures that measure novelty (app.evaluate.novelty): a risk-matched AUROC is what a score adds beyond
the predicted risk; the rows an alteration changed are reported apart."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from app.evaluate.novelty import risk_matched, risk_weights  # noqa: E402


def test_a_score_that_is_only_risk_is_at_chance_once_risk_is_matched() -> None:
    rng = np.random.default_rng(0)
    id_risk, ood_risk = rng.beta(2, 8, 4000), rng.beta(5, 5, 1000)  # the OOD set is sicker
    novel = np.r_[np.zeros(4000), np.ones(1000)] + rng.normal(0, 1, 5000)  # and also unfamiliar, apart from risk
    found = risk_matched(
        id_risk,
        ood_risk,
        {"risk_only": id_risk, "novelty": novel[:4000]},
        {"risk_only": ood_risk, "novelty": novel[4000:]},
    )
    assert found["risk"] > 0.85 and found["risk_after_matching"] == pytest.approx(0.5, abs=0.03)
    assert found["risk_only"] == pytest.approx(0.5, abs=0.03)  # entropy-like scores flag the sick, not the new
    assert found["novelty"] == pytest.approx(0.76, abs=0.03)  # Φ(1/√2): the novelty survives the matching
    assert found["matched_ood_share"] >= 0.9  # the sickest OOD decile may have no in-distribution row


def test_ood_rows_no_in_distribution_row_reaches_are_left_out() -> None:
    id_risk = np.linspace(0.0, 0.45, 100)
    ood_risk = np.linspace(0.0, 1.0, 100)  # its top half has no in-distribution rows at its risk
    weights, kept = risk_weights(id_risk, ood_risk)
    assert kept[:40].all() and not kept[-40:].any()
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    found = risk_matched(id_risk, ood_risk, {"s": id_risk}, {"s": ood_risk})
    assert found["matched_ood_share"] == pytest.approx(0.5)
