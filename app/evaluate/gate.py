"""What each part of the gate catches: AUROC and referred share per component and for the combined gate.

Every shifted set (a provided OOD set or a stress set) is pooled with the in-distribution test split (label 0)
for the AUROCs. A component's referred share is what it would refer on its own; the gate's share
(``not_accepted``) counts every row it does not accept (referred or rejected), and the rejected share is
given beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.evaluate.metrics import auroc
from app.evaluate.scoring import GatedSet
from app.gate.gate import Decision, Gate, support_ranking
from app.gate.spec import Component, GateRates

RANKED = ("support", "density", "epistemic", "gate")
LARGE = np.finfo(np.float64).max  # a score that could not be computed ranks as far as any


def finite(values: np.ndarray) -> np.ndarray:
    """Scores for ranking: one that could not be computed (NaN, an overflow) ranks as far as any."""
    return np.nan_to_num(values, nan=LARGE, posinf=LARGE)


def _rankings(scored: GatedSet) -> dict[str, np.ndarray]:
    return {
        "support": support_ranking(scored.screen),
        "density": finite(scored.density),
        "epistemic": finite(scored.predictions.epistemic),
        "gate": scored.ranking,
    }


def not_accepted(scored: GatedSet) -> float:
    """The share of a set's rows the gate does not accept (referred or rejected)."""
    return 1.0 - float(scored.result.accepted.mean())


def rejected(scored: GatedSet) -> float:
    return float(np.mean([d is Decision.REJECT for d in scored.result.decisions]))


def in_distribution_rates(scored: GatedSet) -> GateRates:
    """The shares of an in-distribution split the gate does not accept, as served (rejected rows count under
    bounds only): the false-positive rates the manifest records."""
    flags = scored.result.flags
    return GateRates(
        rows=scored.rows,
        not_accepted=not_accepted(scored),
        rejected=rejected(scored),
        support=float(flags[Component.SUPPORT].mean()),
        density=float(flags[Component.DENSITY].mean()),
        epistemic=float(flags[Component.EPISTEMIC].mean()),
    )


def auroc_standard_error(area: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUROC from ``positives`` and ``negatives`` rows."""
    q1, q2 = area / (2 - area), 2 * area**2 / (1 + area)
    variance = area * (1 - area) + (positives - 1) * (q1 - area**2) + (negatives - 1) * (q2 - area**2)
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def set_report(gate: Gate, test: GatedSet, shifted: GatedSet, description: str = "") -> dict[str, Any]:
    """On one shifted set: the AUROC (vs ``test``) of every component and of the gate level, the share each
    component would refer on its own (``referred``), and the shares the gate does not accept and rejects; an
    AUROC's ``below_chance`` is True when even its 95% upper limit (Hanley–McNeil) is under 0.5."""
    base, other = _rankings(test), _rankings(shifted)
    labels = np.concatenate([np.zeros(test.rows), np.ones(shifted.rows)])
    areas, below = {}, {}
    for name in RANKED:
        area = auroc(labels, np.concatenate([base[name], other[name]]))
        areas[name] = round(area, 6)
        below[name] = area + 1.96 * auroc_standard_error(area, shifted.rows, test.rows) < 0.5
    own = gate.flags(shifted.screen, shifted.density, shifted.predictions.epistemic)
    return {
        "description": description,
        "rows": shifted.rows,
        "auroc": areas,
        "below_chance": below,
        "referred": {c.value: round(float(own[c].mean()), 6) for c in own},
        "not_accepted": round(not_accepted(shifted), 6),
        "rejected": round(rejected(shifted), 6),
    }


def gate_findings(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What the gate misses on provided OOD sets: a component that ranks a set below chance (``below_chance``,
    with its AUROC) or a gate that refers less than half of it (``under_half``, with its share)."""
    findings: list[dict[str, Any]] = []
    for name, report in reports.items():
        for component in RANKED:
            if report["below_chance"][component]:
                findings.append(
                    {
                        "set": name,
                        "component": component,
                        "finding": "below_chance",
                        "value": report["auroc"][component],
                    }
                )
        if report["not_accepted"] < 0.5:
            findings.append(
                {"set": name, "component": "gate", "finding": "under_half", "value": report["not_accepted"]}
            )
    return findings


def warning_text(finding: dict[str, Any]) -> str:
    """A finding as the loud sentence training prints and the card shows."""
    if finding["finding"] == "below_chance":
        return (
            f"{finding['component']} ranks OOD set '{finding['set']}' below chance (AUROC {finding['value']:.3f}, "
            "95% upper limit under 0.5): on this shift it scores shifted rows as more familiar than "
            "in-distribution ones"
        )
    return (
        f"the gate refers only {finding['value']:.1%} of OOD set '{finding['set']}' (under half): this shift "
        "mostly passes as in-distribution"
    )


def gate_warnings(reports: dict[str, dict[str, Any]]) -> list[str]:
    """Loud warnings for provided OOD sets (see :func:`gate_findings`)."""
    return [warning_text(f) for f in gate_findings(reports)]
