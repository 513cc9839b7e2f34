"""The paper's claims judged on the comparison, each by a rule stated next to its verdict.

A comparison of low-rank with another kind is a paired bootstrap interval over test rows and seeds
(:mod:`app.study.bootstrap`): both kinds are scored on the same rows, a resample draws one set of rows for both
and each kind's seeds with replacement. A condition *holds* when its whole 95% interval meets the rule, *does
not hold* when its whole interval breaks it, and otherwise *cannot tell at this n*. "Similar" and "comparable"
are two-sided (a gain beyond the margin is not "similar" either); a parameter ratio is exact. A claim holds when
every condition does, does not hold when any condition does not, and otherwise cannot tell; it is "not tested"
when the comparison lacks a kind it needs.

OOD sets are judged on what measures novelty (:mod:`app.evaluate.novelty`): a set made by altering rows on the
rows the alteration changed, any other set risk-matched (in-distribution rows reweighted to the set's predicted
risk), so that a score's AUROC there is not its ranking of sick patients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from app.evaluate import metrics as M
from app.evaluate.novelty import risk_weights
from app.study.bootstrap import Interval, binary_auroc, difference, ece, paired_interval, rank_auroc
from app.study.design import ABLATION_BASE

# Rules of the claims; the report states each one next to its verdict.
SIMILAR_AUROC = 0.02  # "similar AUROC": low-rank's minus the other kind's within ±0.02
COMPARABLE_ECE = 0.02  # "calibration comparable": ECEs within ±0.02 of each other
ABOUT = 0.8  # "about k× fewer parameters": a ratio of at least 0.8·k
NO_GAIN = 0.02  # "no consistent gain": the warm start better by at most this in AUROC and in NLL
RESAMPLES = 1000

Scores = Mapping[str, Sequence[Mapping[str, np.ndarray]]]  # label -> each seed's scores.npz arrays


class Verdict(str, Enum):
    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    CANNOT_TELL = "cannot tell at this n"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Condition:
    """One checkable part of a claim, in words with its numbers, and what its interval says of the rule."""

    text: str
    verdict: Verdict


def verdict(conditions: Sequence[Condition]) -> Verdict:
    """Holds when every condition does, not when any condition does not, else cannot tell (not tested when
    empty)."""
    if not conditions:
        return Verdict.NOT_TESTED
    if any(c.verdict is Verdict.DOES_NOT_HOLD for c in conditions):
        return Verdict.DOES_NOT_HOLD
    return Verdict.HOLDS if all(c.verdict is Verdict.HOLDS for c in conditions) else Verdict.CANNOT_TELL


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, the rule it is judged by, and the evidence (conditions) from this comparison."""

    statement: str
    rule: str
    conditions: tuple[Condition, ...]
    missing: tuple[str, ...] = ()  # kinds the claim needs that the comparison lacks

    @property
    def verdict(self) -> Verdict:
        return Verdict.NOT_TESTED if self.missing else verdict(self.conditions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "statement": self.statement,
            "rule": self.rule,
            "verdict": self.verdict.value,
            "conditions": [{"text": c.text, "verdict": c.verdict.value} for c in self.conditions],
            "missing": list(self.missing),
        }


@dataclass(frozen=True)
class Evidence:
    """What the claims are judged on: each label's parameter count and per-seed scores, and the rows each OOD
    set's alteration changed (None for a set not made by altering rows)."""

    parameters: Mapping[str, int]
    scores: Scores
    changed: Mapping[str, np.ndarray | None]
    resamples: int = RESAMPLES

    def lacking(self, *labels: str) -> tuple[str, ...]:
        return tuple(label for label in labels if label not in self.scores or label not in self.parameters)


def _novelty_auroc(is_ood: np.ndarray, risk_and_score: np.ndarray) -> float:
    """The risk-matched AUROC of the score (column 1) for OOD rows, matched on the predicted risk (column 0)."""
    risk, score = risk_and_score[:, 0], risk_and_score[:, 1]
    ood = is_ood.astype(bool)
    weights, kept = risk_weights(risk[~ood], risk[ood])
    # app.evaluate.novelty.weighted_auroc's figure; a class's total weight cancels out of an AUROC.
    ood_scores = score[ood][kept]
    labels = np.r_[np.zeros(weights.size), np.ones(ood_scores.size)]
    return rank_auroc(labels, np.r_[score[~ood], ood_scores], np.r_[weights, np.ones(ood_scores.size)])


def _test_interval(evidence: Evidence, label: str, other: str, metric: Any) -> Interval:
    y = np.asarray(evidence.scores[label][0]["test_y"])
    probs = [np.asarray(s["test_probs"]) for s in evidence.scores[label]]
    others = [np.asarray(s["test_probs"]) for s in evidence.scores[other]]
    return paired_interval(y, probs, others, metric, difference, resamples=evidence.resamples)


def novelty_interval(evidence: Evidence, name: str, label: str, other: str) -> tuple[Interval, str]:
    """The MI's OOD AUROC of ``label`` minus ``other``'s on set ``name`` by the novelty rule (changed rows, or
    risk-matched), with the rule's words."""
    changed = evidence.changed.get(name)

    def pooled(seed: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N_test + N_ood, 2): each row's predicted risk and MI, the test split's rows first."""
        ood = np.stack([seed[f"ood_probs__{name}"][:, 1], seed[f"ood_mi__{name}"]], axis=1)
        test = np.stack([seed["test_probs"][:, 1], seed["test_mi"]], axis=1)
        return np.r_[test, ood if changed is None else ood[changed]]

    a = [pooled(s) for s in evidence.scores[label]]
    b = [pooled(s) for s in evidence.scores[other]]
    n_test = len(evidence.scores[label][0]["test_mi"])
    is_ood = np.r_[np.zeros(n_test), np.ones(len(a[0]) - n_test)]
    if changed is not None:  # a unit error moves the predicted risk itself: the MI's plain AUROC on those rows
        a, b = [p[:, 1] for p in a], [p[:, 1] for p in b]
        found = paired_interval(is_ood, a, b, rank_auroc, difference, resamples=evidence.resamples)
        return found, f"on the {len(is_ood) - n_test} changed rows"
    return paired_interval(is_ood, a, b, _novelty_auroc, difference, resamples=evidence.resamples), "risk-matched"


def _fewer_parameters(evidence: Evidence, other: str, name: str, factor: int) -> Claim:
    statement = f"About {factor}× fewer parameters than {name} at similar AUROC"
    rule = (
        f"{other} / lowrank parameters ≥ {ABOUT * factor:.1f}; lowrank's test AUROC minus {other}'s within "
        f"±{SIMILAR_AUROC} (95% interval)"
    )
    if missing := evidence.lacking(ABLATION_BASE, other):
        return Claim(statement, rule, (), missing)
    low, high = evidence.parameters[ABLATION_BASE], evidence.parameters[other]
    ratio = high / low
    gap = _test_interval(evidence, ABLATION_BASE, other, binary_auroc)
    return Claim(
        statement,
        rule,
        (
            Condition(
                f"{ratio:.1f}× fewer parameters ({low:,} vs {high:,})",
                Verdict.HOLDS if ratio >= ABOUT * factor else Verdict.DOES_NOT_HOLD,
            ),
            Condition(f"AUROC Δ {gap.describe()}", Verdict(gap.within(SIMILAR_AUROC))),
        ),
    )


def _better_ood(evidence: Evidence) -> Claim:
    statement = "Better OOD AUROC (mutual information) than full-rank BBB and the ensemble"
    rule = (
        "lowrank's MI AUROC minus each of theirs above 0 (95% interval) on every OOD set: on the rows an "
        "altered set's alteration changed, risk-matched on any other set"
    )
    if missing := evidence.lacking(ABLATION_BASE, "fullrank", "ensemble"):
        return Claim(statement, rule, (), missing)
    conditions = []
    for name in evidence.changed:
        for other in ("fullrank", "ensemble"):
            gap, how = novelty_interval(evidence, name, ABLATION_BASE, other)
            # "Better" is strict: an interval at or below 0 (both kinds at AUROC 1.000 included) does not hold.
            found = Verdict.HOLDS if gap.low > 0 else Verdict.DOES_NOT_HOLD if gap.high <= 0 else Verdict.CANNOT_TELL
            conditions.append(Condition(f"{name} ({how}) vs {other}: Δ {gap.describe()}", found))
    return Claim(statement, rule, tuple(conditions))


def _comparable_calibration(evidence: Evidence) -> Claim:
    statement = "Calibration comparable to the other kinds"
    others = [label for label in ("fullrank", "ensemble", "deterministic") if label in evidence.scores]
    rule = f"lowrank's ECE minus each of {', '.join(others) or 'fullrank, ensemble'}'s within ±{COMPARABLE_ECE}"
    if ABLATION_BASE not in evidence.scores or not others:
        return Claim(statement, rule, (), evidence.lacking(ABLATION_BASE) or ("fullrank", "ensemble"))
    conditions = []
    for other in others:
        gap = _test_interval(evidence, ABLATION_BASE, other, ece)
        conditions.append(Condition(f"ECE Δ vs {other} {gap.describe()}", Verdict(gap.within(COMPARABLE_ECE))))
    return Claim(statement, rule, tuple(conditions))


def _warm_start_no_gain(evidence: Evidence) -> Claim:
    statement = "The SVD warm start brings no consistent gain (the paper's finding)"
    rule = (
        f"lowrank-svd's gain over lowrank at most {NO_GAIN} in test AUROC and in NLL (95% interval; one-sided: "
        "the claim is about a gain)"
    )
    if missing := evidence.lacking(ABLATION_BASE, "lowrank-svd"):
        return Claim(statement, rule, (), missing)
    auroc_gain = _test_interval(evidence, "lowrank-svd", ABLATION_BASE, binary_auroc)
    nll_gain = _test_interval(evidence, ABLATION_BASE, "lowrank-svd", M.nll)  # lower NLL is a gain
    return Claim(
        statement,
        rule,
        (
            Condition(f"AUROC gain {auroc_gain.describe()}", Verdict(auroc_gain.verdict(NO_GAIN, at_most=True))),
            Condition(f"NLL gain {nll_gain.describe()}", Verdict(nll_gain.verdict(NO_GAIN, at_most=True))),
        ),
    )


def assess_claims(evidence: Evidence) -> list[Claim]:
    """The paper's claims judged on ``evidence``, each with its rule and its conditions' intervals."""
    return [
        _fewer_parameters(evidence, "fullrank", "full-rank BBB", 3),
        _fewer_parameters(evidence, "ensemble", "a 5-member deep ensemble", 8),
        _better_ood(evidence),
        _comparable_calibration(evidence),
        _warm_start_no_gain(evidence),
    ]
