"""What each part of the gate catches (app.evaluate.gate): AUROCs, shares, warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.checkpoint.io import load_checkpoint
from app.data.dataset import load_dataset
from app.evaluate.gate import RANKED, auroc_standard_error, gate_warnings, in_distribution_rates, set_report
from app.evaluate.scoring import BankScorer, gate_set


@pytest.fixture(scope="module")
def scored(tiny_checkpoint: Path) -> dict:
    checkpoint = load_checkpoint(tiny_checkpoint)
    data = load_dataset(checkpoint.manifest.data)
    scorer = BankScorer(checkpoint.model, checkpoint.manifest.default_samples)

    def score(frame: object) -> object:
        return gate_set(scorer, checkpoint.gate, checkpoint.manifest.preprocessing, frame)

    far = data.test.frame.assign(x1=data.test.frame["x1"] + 10.0)
    return {"gate": checkpoint.gate, "test": score(data.test.frame), "far": score(far), "data": data}


def test_a_set_against_itself_is_ranked_at_chance(scored: dict) -> None:
    report = set_report(scored["gate"], scored["test"], scored["test"])
    assert report["auroc"] == {name: 0.5 for name in RANKED}
    assert not any(report["below_chance"].values())
    assert report["rows"] == scored["test"].rows


def test_far_rows_are_caught_by_support_density_and_the_gate(scored: dict) -> None:
    report = set_report(scored["gate"], scored["test"], scored["far"], "x1 + 10")
    assert report["description"] == "x1 + 10"
    assert report["auroc"]["support"] > 0.99 and report["auroc"]["density"] > 0.99 and report["auroc"]["gate"] > 0.99
    assert report["not_accepted"] == 1.0 and report["referred"]["support"] == 1.0
    assert report["rejected"] == 0.0  # x1 has no plausible bounds


def test_in_distribution_rates_match_the_manifest(scored: dict) -> None:
    rates = in_distribution_rates(scored["test"])
    assert rates == scored["gate"].spec.achieved["test"]


def test_hanley_mcneil_standard_error() -> None:
    # A = 0.5 with 100 rows each: (0.25 + 99 (1/3 − 1/4) · 2) / 10⁴
    assert auroc_standard_error(0.5, 100, 100) == pytest.approx(((0.25 + 99 * (1 / 12) * 2) / 1e4) ** 0.5)


def test_warnings_name_the_set_and_what_failed() -> None:
    reports = {
        "creatinine-umol": {
            "auroc": {n: 0.9 for n in RANKED} | {"epistemic": 0.106},
            "below_chance": {n: n == "epistemic" for n in RANKED},
            "not_accepted": 0.9,
        },
        "late-enrolment": {
            "auroc": {n: 0.5 for n in RANKED},
            "below_chance": {n: False for n in RANKED},
            "not_accepted": 0.02,
        },
    }
    warnings = gate_warnings(reports)
    assert len(warnings) == 2
    assert warnings[0].startswith("epistemic ranks OOD set 'creatinine-umol' below chance (AUROC 0.106")
    assert warnings[1].startswith("the gate refers only 2.0% of OOD set 'late-enrolment'")
