"""What the comparison trains (app.study.design): plans that cannot run are refused."""

from __future__ import annotations

import pytest

from app.study.design import COMPARISON, StudyPlan, Variant


def test_plans_that_cannot_run_are_refused_before_training() -> None:
    with pytest.raises(ValueError, match="earlier variant"):
        StudyPlan(variants=(Variant("svd", {"kind": "lowrank"}, warm_start_from="deterministic"),), ablation_ranks=())
    with pytest.raises(ValueError, match="KL warm-up"):
        StudyPlan(epochs=2)  # the default 10-epoch warm-up would leave no epoch to keep
    with pytest.raises(ValueError, match="lowrank"):
        StudyPlan(variants=COMPARISON[3:4])  # the rank ablation varies a lowrank variant
