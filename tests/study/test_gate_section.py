"""The comparison report's gate section (app.study.gate_section): aggregation over seeds and the tables."""

from __future__ import annotations

from typing import Any

from app.evaluate.gate import RANKED
from app.study.gate_section import aggregate_gate, render_gate


def _set(auroc: float, not_accepted: float, below: bool = False) -> dict[str, Any]:
    return {
        "description": "",
        "rows": 10,
        "auroc": {c: auroc for c in RANKED},
        "below_chance": {c: below and c == "epistemic" for c in RANKED},
        "referred": {"support": 0.5, "density": 0.5, "epistemic": 0.1},
        "not_accepted": not_accepted,
        "rejected": 0.0,
    }


def _run(seed: int, unit_auroc: float) -> dict[str, Any]:
    rates = {
        "rows": 10,
        "not_accepted": 0.02 + 0.01 * seed,
        "rejected": 0.0,
        "support": 0.0,
        "density": 0.01,
        "epistemic": 0.01,
    }
    gate = {
        "target_fpr": 0.02,
        "test": rates,
        "warnings": [],
        "ood": {"unit": _set(unit_auroc, 0.9, below=unit_auroc < 0.5), "late": _set(0.5, 0.03)},
        "stress": {"all-x10": _set(1.0, 1.0)},
    }
    return {"seed": seed, "metrics": {"gate": gate}}


def test_findings_are_counted_over_seeds_and_rendered_once_per_kind() -> None:
    summary = aggregate_gate([_run(0, 0.9), _run(1, 0.1), _run(2, 0.2)])
    assert summary["test"]["not_accepted"]["mean"] == 0.03
    findings = {(f["set"], f["finding"]): f for f in summary["findings"]}
    assert findings[("late", "under_half")]["seeds"] == 3
    assert findings[("unit", "below_chance")] == {
        "set": "unit",
        "component": "epistemic",
        "finding": "below_chance",
        "seeds": 2,
        "low": 0.1,
        "high": 0.2,
    }
    text = render_gate({"lowrank": {"seeds": [0, 1, 2], "gate": summary}})
    assert "### OOD set unit (10 rows)" in text and "| `all-x10` | 10 | 100.0% |" in text
    assert "| lowrank | `unit` | epistemic below chance (AUROC 0.100–0.200) | 2 of 3 |" in text
    assert "| lowrank | `late` | the gate refers under half (share 3.0%) | 3 of 3 |" in text
