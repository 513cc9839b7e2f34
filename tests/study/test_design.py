"""What the comparison trains (app.study.design): plans that cannot run are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.study.design import COMPARISON, StudyPlan, Variant


def test_plans_that_cannot_run_are_refused_before_training() -> None:
    with pytest.raises(ValueError, match="earlier variant"):
        StudyPlan(variants=(Variant("svd", {"kind": "lowrank"}, warm_start_from="deterministic"),), ablation_ranks=())
    with pytest.raises(ValueError, match="KL warm-up"):
        StudyPlan(epochs=2)  # the default 10-epoch warm-up would leave no epoch to keep
    with pytest.raises(ValueError, match="lowrank"):
        StudyPlan(variants=COMPARISON[3:4])  # the rank ablation varies a lowrank variant
    with pytest.raises(ValueError, match="every_seed_ranks"):
        StudyPlan(ablation_ranks=(2, 4), every_seed_ranks=(8,))


def test_an_every_seed_rank_runs_at_every_comparison_seed_once() -> None:
    plan = StudyPlan(seeds=(0, 1, 2), ablation_seeds=(0,), ablation_ranks=(2, 4, 15), every_seed_ranks=(4,))
    points = [(p.rank, p.seed, p.run.folder.name) for p in plan.ablation_points(Path("runs"))]
    assert points == [
        (2, 0, "lowrank-r2-s0"),
        (4, 0, "lowrank-r4-s0"),
        (4, 1, "lowrank-r4-s1"),
        (4, 2, "lowrank-r4-s2"),
        (15, 0, "lowrank-s0"),  # the lowrank variant's own rank reuses its run
    ]
    assert len(plan.runs(Path("runs"))) == len(plan.variants) * 3 + 4
