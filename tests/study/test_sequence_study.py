from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sequence_tables import write_visits  # noqa: E402

from app.data.sequence_table import load_sequence_table  # noqa: E402
from app.study.design import StudyPlan  # noqa: E402
from app.study.sequence_report import write_sequence_results  # noqa: E402
from app.study.sequences import SEQUENCE_COMPARISON, make_sequence_plan, run_sequence_comparison  # noqa: E402


def test_the_recurrent_plan_is_the_papers_comparison() -> None:
    plan = make_sequence_plan()
    assert [v.label for v in plan.variants] == ["lowrank", "fullrank", "ensemble", "mcdropout"]
    assert plan.seeds == (0, 1, 2) and plan.hidden == (64, 64) and plan.samples == 150
    assert plan.ablation_seeds == (0,) and plan.ablation_ranks == (2, 4, 8, 16, 32)
    config = plan.config(plan.variant("lowrank"), 0, Path("runs"))
    assert config.rank == 16 and config.hidden == [64, 64]
    # The base run at rank 16 is the ablation's rank-16 point: trained once.
    runs = plan.runs(Path("runs"))
    assert len(runs) == 4 * 3 + 4 and len({r.folder for r in runs}) == len(runs)
    assert make_sequence_plan(ablation=False).ablation_ranks == ()


def test_a_tiny_study_trains_resumes_and_reports(tmp_path: Path) -> None:
    dataset = load_sequence_table(write_visits(tmp_path / "visits.csv", continuous=True), "y", "patient", "day")
    shared = {"rank": 3, "kl_warmup_epochs": 1, "val_samples": 4, "batch_size": 32, "device": "cpu"}
    plan = StudyPlan(
        seeds=(0, 1),
        ablation_seeds=(0,),
        variants=SEQUENCE_COMPARISON[:2],
        ablation_ranks=(2,),
        epochs=2,
        hidden=(8,),
        samples=8,
        shared=shared,
    )
    out = tmp_path / "runs"
    outcomes = run_sequence_comparison(plan, dataset, out)
    assert len(outcomes) == 5 and all(o.trained for o in outcomes)
    again = run_sequence_comparison(plan, dataset, out)
    assert not any(o.trained for o in again)  # finished runs are read back, not retrained

    # A run stopped after its checkpoint was written is evaluated from it; one whose weights no longer match
    # their hash is trained again.
    first, second = outcomes[0].run.folder, outcomes[1].run.folder
    for folder in (first, second):
        (folder / "result.json").unlink()
    (second / "weights.safetensors").write_bytes(b"torn")
    weights_before = (first / "weights.safetensors").read_bytes()
    resumed = {o.run.folder: o for o in run_sequence_comparison(plan, dataset, out)}
    assert not resumed[first].trained and resumed[first].resumed and resumed[first].result["resumed"] is True
    assert (first / "weights.safetensors").read_bytes() == weights_before
    assert resumed[first].result["metrics"] == outcomes[0].result["metrics"]
    assert resumed[second].trained and "resumed" not in resumed[second].result

    numbers = write_sequence_results(
        plan, out, tmp_path / "docs", "visits", regression=True, command="test", models=tmp_path / "models"
    )
    bundled = tmp_path / "models" / "visits-best"  # the comparison's lowest validation NLL, evaluated there
    best = min((o for o in outcomes if o.run.label != "lowrank-r2"), key=lambda o: o.result["training"]["best_val_nll"])
    assert numbers["bundled"]["source"] == best.run.folder.name
    assert json.loads((bundled / "manifest.json").read_text())["name"] == "visits-best"
    assert (bundled / "card.md").is_file() and (bundled / "metrics.json").is_file()
    low, full = numbers["summary"]["lowrank"], numbers["summary"]["fullrank"]
    assert low["parameter_count"]["mean"] < full["parameter_count"]["mean"]
    assert low["test"]["rmse"]["n"] == 2 and 0.0 <= low["test"]["picp_90"]["mean"] <= 1.0
    assert set(numbers["ablation"]) == {2}
    assert [v["verdict"] in ("holds", "does not hold", "cannot tell at this n") for v in numbers["verdicts"]] == [
        True
    ] * 3
    assert numbers["verdicts"][2]["statement"].startswith("at rank 2 (ablation, seed 0)")  # rank 3 is the study's
    assert all(v["rule"] for v in numbers["verdicts"])
    report = (tmp_path / "docs" / "results-visits.md").read_text()
    assert "## Test split" in report and "## Rank ablation" in report and "## Verdicts" in report
    assert (tmp_path / "docs" / "results" / "visits.json").is_file()
    kept = tmp_path / "docs" / "results" / "runs" / "runs"  # every finished run's records, beside the report
    assert {p.name for p in kept.iterdir()} == {o.run.folder.name for o in outcomes}
    assert all((kept / o.run.folder.name / "scores.npz").is_file() for o in outcomes)


def test_the_pm25_mae_is_also_given_in_micrograms(tmp_path: Path) -> None:
    import numpy as np

    from app.study.sequence_report import original_scale_mae

    for seed, error in ((0, 10.0), (1, 20.0)):
        folder = tmp_path / f"r{seed}"
        folder.mkdir()
        y = np.log1p(np.array([50.0, 100.0]))
        mean = np.log1p(np.array([50.0 + error, 100.0 - error]))
        np.savez(folder / "scores.npz", test_y=y, test_mean=mean)
    entry = original_scale_mae([tmp_path / "r0", tmp_path / "r1"])
    assert entry["mean"] == pytest.approx(15.0) and entry["n"] == 2
