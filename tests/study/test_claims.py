"""The paper's claims (app.study.claims): verdicts follow the stated rules."""

from __future__ import annotations

from app.study.claims import Verdict, assess_claims, verdict


def _summary(low_params: int, low_auroc: float, low_ece: float, low_ood: float) -> dict:
    def entry(params: int, auroc: float, ece: float, ood: float, nll: float = 0.4) -> dict:
        return {
            "parameter_count": params,
            "test": {"auroc": {"mean": auroc}, "ece": {"mean": ece}, "nll": {"mean": nll}},
            "ood": {
                "shift": {"mutual_information": {"auroc": {"mean": ood}}},
                "units": {"mutual_information": {"auroc": {"mean": ood + 0.1}}},
            },
        }

    return {
        "lowrank": entry(low_params, low_auroc, low_ece, low_ood),
        "lowrank-svd": entry(low_params, low_auroc + 0.05, low_ece, low_ood, nll=0.39),
        "fullrank": entry(36_000, 0.80, 0.03, 0.70),
        "ensemble": entry(90_000, 0.82, 0.02, 0.75),
        "deterministic": entry(18_000, 0.81, 0.045, 0.5),
    }


def test_claim_verdicts_follow_the_stated_rules() -> None:
    assert verdict([]) is Verdict.NOT_TESTED
    good = assess_claims(_summary(11_000, 0.81, 0.03, 0.80))
    assert [c.verdict for c in good] == [
        Verdict.HOLDS,  # 3.3× fewer than fullrank, AUROC 0.01 above it
        Verdict.HOLDS,  # 8.2× fewer than the ensemble, AUROC 0.01 below (within 0.02)
        Verdict.HOLDS,  # OOD AUROC above both, on both sets
        Verdict.HOLDS,  # ECE within 0.02 of all three
        Verdict.IN_PART,  # the warm start gains 0.05 AUROC (a gain) but only 0.01 NLL
    ]
    poor = assess_claims(_summary(20_000, 0.75, 0.06, 0.72))
    assert [c.verdict for c in poor[:4]] == [
        Verdict.DOES_NOT_HOLD,  # 1.8× fewer, AUROC 0.05 below
        Verdict.DOES_NOT_HOLD,  # 4.5× fewer (< 6.4), AUROC 0.07 below
        Verdict.IN_PART,  # above fullrank, below the ensemble, on both sets
        Verdict.IN_PART,  # ECE 0.06: within 0.02 of deterministic's 0.045 only
    ]
    small_but_worse = assess_claims(_summary(11_000, 0.75, 0.03, 0.80))
    assert small_but_worse[1].verdict is Verdict.IN_PART  # 8.2× fewer, but AUROC 0.07 below
    assert not small_but_worse[1].conditions[1].holds
    missing = assess_claims({k: v for k, v in _summary(11_000, 0.81, 0.03, 0.8).items() if k != "ensemble"})
    assert missing[1].verdict is Verdict.NOT_TESTED and missing[1].missing == ("ensemble",)
