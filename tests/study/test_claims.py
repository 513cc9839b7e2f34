"""The paper's claims (app.study.claims): two-sided rules on paired bootstrap intervals, and OOD sets judged on
what measures novelty."""

from __future__ import annotations

import numpy as np
import pytest

from app.study.claims import Condition, Evidence, Verdict, assess_claims, novelty_interval, verdict

N_TEST, N_OOD = 2000, 1000


def _seed(
    rng: np.random.Generator, y: np.ndarray, case: np.ndarray, signal: float, ood_mi: dict[str, np.ndarray]
) -> dict:
    """One seed's scores.npz arrays: probabilities that rank ``y`` with strength ``signal`` (``case``: the rows'
    noise every kind sees, as a test split's hard cases), MI on the test split ~ U(0, 1), the given OOD MI, and
    OOD risk above the test split's (a risk shift)."""
    logit = signal * (2 * y - 1) + case + rng.normal(0, 0.2, y.size) - 1.5
    p = 1 / (1 + np.exp(-logit))
    arrays = {"test_y": y, "test_probs": np.stack([1 - p, p], 1), "test_mi": rng.uniform(0, 1, y.size)}
    for name, mi in ood_mi.items():
        risk = rng.uniform(0.3, 0.9, mi.size)
        arrays[f"ood_mi__{name}"] = mi
        arrays[f"ood_probs__{name}"] = np.stack([1 - risk, risk], 1)
    return arrays


def _evidence(low_signal: float, low_ood: float, seeds: int = 3, n: int = N_TEST) -> Evidence:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=n) < 0.2).astype(np.int64)
    case = rng.normal(0, 1, n)
    changed = np.r_[np.ones(N_OOD // 2, bool), np.zeros(N_OOD - N_OOD // 2, bool)]

    def label(signal: float, ood: float) -> list[dict]:
        out = []
        for _ in range(seeds):
            units = rng.uniform(0, 1, N_OOD)
            units[changed] += ood  # the unchanged rows are test rows: their MI is the test split's
            out.append(_seed(rng, y, case, signal, {"shift": rng.uniform(0, 1, N_OOD) + ood, "units": units}))
        return out

    scores = {
        "lowrank": label(low_signal, low_ood),
        "lowrank-svd": label(low_signal, low_ood),
        "fullrank": label(1.0, 0.3),
        "ensemble": label(1.0, 0.3),
        "deterministic": label(1.0, 0.0),
    }
    parameters = {"lowrank": 11_000, "lowrank-svd": 11_000, "fullrank": 36_000, "ensemble": 90_000}
    return Evidence({**parameters, "deterministic": 18_000}, scores, {"shift": None, "units": changed}, 100)


def test_a_claim_holds_when_every_condition_does_and_fails_when_any_does_not() -> None:
    def conditions(*verdicts: Verdict) -> list[Condition]:
        return [Condition("c", v) for v in verdicts]

    assert verdict([]) is Verdict.NOT_TESTED
    assert verdict(conditions(Verdict.HOLDS, Verdict.HOLDS)) is Verdict.HOLDS
    assert verdict(conditions(Verdict.HOLDS, Verdict.CANNOT_TELL)) is Verdict.CANNOT_TELL
    assert verdict(conditions(Verdict.CANNOT_TELL, Verdict.DOES_NOT_HOLD)) is Verdict.DOES_NOT_HOLD


@pytest.fixture(scope="module")
def like_for_like() -> Evidence:
    """Low-rank scored as well as full-rank and the ensemble, its MI shifted further on both OOD sets."""
    return _evidence(low_signal=1.0, low_ood=0.6)


def test_like_for_like_kinds_meet_the_rules(like_for_like: Evidence) -> None:
    claims = assess_claims(like_for_like)
    parameters, similar = claims[0].conditions
    assert parameters.verdict is Verdict.HOLDS and similar.verdict is Verdict.HOLDS  # same signal: Δ ≈ 0
    assert claims[0].verdict is Verdict.HOLDS
    assert claims[1].verdict is Verdict.HOLDS  # 8.2× fewer than the ensemble
    assert claims[2].verdict is Verdict.HOLDS  # MI shifted by 0.6 against 0.3 on both sets
    assert claims[3].verdict is Verdict.HOLDS  # the same calibration


def test_a_gain_beyond_the_margin_is_not_similar() -> None:
    """The old rule passed any gain; "similar" is two-sided now."""
    claims = assess_claims(_evidence(low_signal=2.5, low_ood=0.6))
    similar = claims[0].conditions[1]
    assert similar.verdict is Verdict.DOES_NOT_HOLD and "AUROC Δ +" in similar.text
    assert claims[0].verdict is Verdict.DOES_NOT_HOLD


def test_worse_ood_does_not_hold_and_a_few_rows_cannot_tell() -> None:
    worse = assess_claims(_evidence(low_signal=1.0, low_ood=0.0))[2]
    assert worse.verdict is Verdict.DOES_NOT_HOLD
    assert all(c.verdict is Verdict.DOES_NOT_HOLD for c in worse.conditions)
    few = assess_claims(_evidence(low_signal=1.0, low_ood=0.3, seeds=2, n=60))[0]
    assert few.conditions[1].verdict is Verdict.CANNOT_TELL  # 60 test rows: the AUROC interval spans ±0.02


def test_an_altered_set_is_judged_on_its_changed_rows_and_another_set_risk_matched(like_for_like: Evidence) -> None:
    evidence = like_for_like
    gap, how = novelty_interval(evidence, "units", "lowrank", "fullrank")
    assert how == f"on the {N_OOD // 2} changed rows"
    # On the changed rows alone the MI shifts by 0.6 vs 0.3: the AUROC gap is that of the shifted rows,
    # not diluted by the unchanged half (which would halve it).
    assert 0.12 < gap.estimate < 0.25 and gap.low > 0
    gap, how = novelty_interval(evidence, "shift", "lowrank", "fullrank")
    assert how == "risk-matched" and gap.low > 0


def test_a_missing_kind_is_not_tested(like_for_like: Evidence) -> None:
    evidence = like_for_like
    scores = {k: v for k, v in evidence.scores.items() if k != "ensemble"}
    claims = assess_claims(Evidence(evidence.parameters, scores, evidence.changed, 100))
    assert claims[1].verdict is Verdict.NOT_TESTED and claims[1].missing == ("ensemble",)
    assert claims[2].verdict is Verdict.NOT_TESTED
