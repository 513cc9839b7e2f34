"""The paper's claims judged on the comparison's summary, each by a rule stated next to its verdict.

A claim's evidence is a list of conditions (:class:`Condition`, in words with the numbers); its :class:`Verdict`
holds when every condition does, in part when some do, and is "not tested" when the comparison lacks a kind it
needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from app.study.design import ABLATION_BASE

# Rules of the claims; the report states each one next to its verdict.
SIMILAR_AUROC = 0.02  # "similar AUROC": low-rank's mean at most this far below the other kind's
COMPARABLE_ECE = 0.02  # "calibration comparable": mean ECEs within this of each other
ABOUT = 0.8  # "about k× fewer parameters": a ratio of at least 0.8·k
NO_GAIN = 0.02  # "no consistent gain": warm start better by at most this in AUROC and in NLL


class Verdict(str, Enum):
    HOLDS = "holds"
    IN_PART = "holds in part"
    DOES_NOT_HOLD = "does not hold"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Condition:
    """One checkable part of a claim, in words with its numbers, and whether the numbers meet the rule."""

    text: str
    holds: bool


def verdict(conditions: Sequence[Condition]) -> Verdict:
    """Holds when every condition does, in part when some do, not when none does (not tested when empty)."""
    if not conditions:
        return Verdict.NOT_TESTED
    met = sum(c.holds for c in conditions)
    if met == len(conditions):
        return Verdict.HOLDS
    return Verdict.IN_PART if met else Verdict.DOES_NOT_HOLD


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
            "conditions": [{"text": c.text, "holds": c.holds} for c in self.conditions],
            "missing": list(self.missing),
        }


def _lacking(summary: Mapping[str, Any], *labels: str) -> tuple[str, ...]:
    return tuple(label for label in labels if label not in summary)


def _test(summary: Mapping[str, Any], label: str, metric: str) -> float:
    return float(summary[label]["test"][metric]["mean"])


def _fewer_parameters(summary: Mapping[str, Any], other: str, name: str, factor: int) -> Claim:
    statement = f"About {factor}× fewer parameters than {name} at similar AUROC"
    rule = (
        f"{other} / lowrank parameters ≥ {ABOUT * factor:.1f}; lowrank's mean test AUROC at most "
        f"{SIMILAR_AUROC} below {other}'s"
    )
    if missing := _lacking(summary, ABLATION_BASE, other):
        return Claim(statement, rule, (), missing)
    low, high = summary[ABLATION_BASE]["parameter_count"], summary[other]["parameter_count"]
    ratio = high / low
    auroc_low, auroc_other = _test(summary, ABLATION_BASE, "auroc"), _test(summary, other, "auroc")
    delta = auroc_low - auroc_other
    return Claim(
        statement,
        rule,
        (
            Condition(f"{ratio:.1f}× fewer parameters ({low:,} vs {high:,})", ratio >= ABOUT * factor),
            Condition(f"AUROC {auroc_low:.3f} vs {auroc_other:.3f} (Δ {delta:+.3f})", delta >= -SIMILAR_AUROC),
        ),
    )


def _better_ood(summary: Mapping[str, Any]) -> Claim:
    statement = "Better OOD AUROC (mutual information) than full-rank BBB and the ensemble"
    rule = "lowrank's mean OOD AUROC (MI) above each of theirs, on every OOD set"
    if missing := _lacking(summary, ABLATION_BASE, "fullrank", "ensemble"):
        return Claim(statement, rule, (), missing)
    conditions = []
    for name, entry in summary[ABLATION_BASE]["ood"].items():
        low = entry["mutual_information"]["auroc"]["mean"]
        for other in ("fullrank", "ensemble"):
            value = summary[other]["ood"][name]["mutual_information"]["auroc"]["mean"]
            conditions.append(Condition(f"{name}: {low:.3f} vs {other} {value:.3f}", low > value))
    return Claim(statement, rule, tuple(conditions))


def _comparable_calibration(summary: Mapping[str, Any]) -> Claim:
    statement = "Calibration comparable to the other kinds"
    others = [label for label in ("fullrank", "ensemble", "deterministic") if label in summary]
    rule = f"mean ECE of lowrank within {COMPARABLE_ECE} of each of {', '.join(others) or 'fullrank, ensemble'}"
    if ABLATION_BASE not in summary or not others:
        return Claim(statement, rule, (), _lacking(summary, ABLATION_BASE) or ("fullrank", "ensemble"))
    low = _test(summary, ABLATION_BASE, "ece")
    return Claim(
        statement,
        rule,
        tuple(
            Condition(
                f"ECE {low:.3f} vs {other} {_test(summary, other, 'ece'):.3f}",
                abs(low - _test(summary, other, "ece")) <= COMPARABLE_ECE,
            )
            for other in others
        ),
    )


def _warm_start_no_gain(summary: Mapping[str, Any]) -> Claim:
    statement = "The SVD warm start brings no consistent gain (the paper's finding)"
    rule = f"lowrank-svd better than lowrank by at most {NO_GAIN} in mean AUROC and at most {NO_GAIN} in mean NLL"
    if missing := _lacking(summary, ABLATION_BASE, "lowrank-svd"):
        return Claim(statement, rule, (), missing)
    auroc_gain = _test(summary, "lowrank-svd", "auroc") - _test(summary, ABLATION_BASE, "auroc")
    nll_gain = _test(summary, ABLATION_BASE, "nll") - _test(summary, "lowrank-svd", "nll")
    return Claim(
        statement,
        rule,
        (
            Condition(f"AUROC gain {auroc_gain:+.3f}", auroc_gain <= NO_GAIN),
            Condition(f"NLL gain {nll_gain:+.3f}", nll_gain <= NO_GAIN),
        ),
    )


def assess_claims(summary: Mapping[str, Any]) -> list[Claim]:
    """The paper's claims judged on ``summary`` (per label: ``parameter_count``, ``test[metric]["mean"]``,
    ``ood[set]["mutual_information"]["auroc"]["mean"]``), each with its rule and evidence."""
    return [
        _fewer_parameters(summary, "fullrank", "full-rank BBB", 3),
        _fewer_parameters(summary, "ensemble", "a 5-member deep ensemble", 8),
        _better_ood(summary),
        _comparable_calibration(summary),
        _warm_start_no_gain(summary),
    ]
