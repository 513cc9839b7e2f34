"""`sbnn compare` end to end on a tiny plan (app.study.runs and app.study.publish): runs, resumability, the
report, figures, served models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.checkpoint.io import load_checkpoint
from app.data.tabular import load_table
from app.study.design import COMPARISON, StudyPlan
from app.study.publish import write_results
from app.study.runs import RESULT_FILE, run_comparison

TINY_PLAN = StudyPlan(
    seeds=(0,),
    ablation_seeds=(0,),
    variants=tuple(v for v in COMPARISON if v.label in ("deterministic", "lowrank", "lowrank-svd")),
    ablation_ranks=(1, 2, 15),  # 15 is the lowrank variant's own rank: its run is reused
    epochs=2,
    hidden=(8, 8),
    samples=16,
    shared={"kl_warmup_epochs": 1, "patience": 1, "val_samples": 4},
    timing_repeats=1,
)


@pytest.fixture(scope="module")
def compared(table_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny plan run twice into one folder, then aggregated into docs and models."""
    data = load_table(table_files[0], "outcome", ood_path=table_files[1], seed=0)
    root = tmp_path_factory.mktemp("compare")
    out = root / "runs"
    first = run_comparison(TINY_PLAN, data, out)
    stamps = {o.run.name: (o.run.folder / RESULT_FILE).stat().st_mtime_ns for o in first}
    second = run_comparison(TINY_PLAN, data, out)
    report = write_results(TINY_PLAN, data, out, root / "docs", root / "models", command="sbnn compare --test")
    return {"root": root, "out": out, "first": first, "second": second, "stamps": stamps, "report": report}


def test_every_run_leaves_a_result_and_the_shared_rank_is_reused(compared: dict) -> None:
    names = sorted(o.run.name for o in compared["first"])
    assert names == sorted(["deterministic-s0", "lowrank-s0", "lowrank-svd-s0", "lowrank-r1-s0", "lowrank-r2-s0"])
    for outcome in compared["first"]:
        result = json.loads((outcome.run.folder / RESULT_FILE).read_text())
        assert result["config"]["seed"] == 0 and result["metrics"]["test"]["n"] > 0
        assert (outcome.run.folder / "scores.npz").is_file()
    svd = next(o for o in compared["first"] if o.run.label == "lowrank-svd")
    assert svd.result["config"]["warm_start"] == str(compared["out"] / "deterministic-s0")


def test_a_second_call_trains_nothing(compared: dict) -> None:
    assert all(o.trained for o in compared["first"])
    assert not any(o.trained for o in compared["second"])
    for outcome in compared["second"]:
        assert (outcome.run.folder / RESULT_FILE).stat().st_mtime_ns == compared["stamps"][outcome.run.name]


def test_report_has_tables_claims_and_figures(compared: dict) -> None:
    docs = compared["root"] / "docs"
    text = (docs / "results.md").read_text()
    for heading in (
        "## The paper's claims",
        "## The paper's table beside ours",
        "## Test split",
        "## Size and speed",
        "## OOD detection",
        "### ood-file",
        "## Rank ablation",
        "## Served models",
        "## Observations",
        "## PAC-Bayes bound",
        "## The layered gate",
        "### In-distribution test split",
        "### OOD set ood-file",
        "### Stress suite",
    ):
        assert heading in text, heading
    gate = compared["report"]["summary"]["lowrank"]["gate"]
    assert gate["target_fpr"] == 0.02 and set(gate["ood"]) == {"ood-file"} and "all-x10" in gate["stress"]
    assert "| `all-x10` |" in text
    assert "Risk-matched AUROCs" in text  # each OOD set's novelty figures, per kind
    assert "risk_matched" in compared["report"]["summary"]["lowrank"]["ood"]["ood-file"]
    assert "sbnn compare --test" in text and "torch" in text
    assert "### lowrank: `lowrank-s0`" in text and "McAllester" in text  # the bound of the best lowrank model
    verdicts = [c["verdict"] for c in compared["report"]["claims"]]
    assert "not tested" in verdicts  # no fullrank or ensemble in the tiny plan
    calibration = compared["report"]["claims"][3]  # lowrank's ECE against deterministic's, by its interval
    assert calibration["verdict"] in ("holds", "does not hold", "cannot tell at this n")
    assert "ECE Δ vs deterministic" in calibration["conditions"][0]["text"]
    assert "[" in calibration["conditions"][0]["text"] and "two-sided" in text
    for figure in ("reliability.png", "risk_coverage.png", "ood_scores.png", "rank_ablation.png", "results.json"):
        assert (docs / "results" / figure).stat().st_size > 0, figure
    kept = docs / "results" / "runs" / Path(compared["out"]).name  # per-seed metrics and scores, committed
    assert {p.name for p in kept.iterdir()} == set(compared["report"]["runs"])
    assert all((f / "result.json").is_file() and (f / "scores.npz").is_file() for f in kept.iterdir())
    ablation = compared["report"]["ablation"]
    assert [row["rank"] for row in ablation] == [1, 2, 15] and ablation[2]["runs"] == ["lowrank-s0"]
    assert ablation[0]["parameter_count"] < ablation[1]["parameter_count"]


def test_observations_survive_a_rewrite(compared: dict, table_files: tuple[Path, Path]) -> None:
    docs = compared["root"] / "docs"
    path = docs / "results.md"
    path.write_text(path.read_text().replace("_Not written yet", "Hand-written: low rank wins.\n_Not written yet"))
    data = load_table(table_files[0], "outcome", ood_path=table_files[1], seed=0)
    write_results(TINY_PLAN, data, compared["out"], docs, None, command="sbnn compare --again")
    text = path.read_text()
    assert "Hand-written: low rank wins." in text and "sbnn compare --again" in text


def test_best_model_of_each_kind_is_served_from_models(compared: dict) -> None:
    models = compared["root"] / "models"
    assert sorted(p.name for p in models.iterdir()) == ["cohort-deterministic", "cohort-lowrank", "cohort-lowrank-svd"]
    for folder in models.iterdir():
        checkpoint = load_checkpoint(folder)  # verifies the weights' hash
        assert checkpoint.manifest.name == folder.name
        assert checkpoint.manifest.metrics["test"]["n"] > 0
        assert {"card.md", "metrics.json", "reliability.png", "ood_scores.png"} <= {p.name for p in folder.iterdir()}
        assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    assert load_checkpoint(models / "cohort-deterministic").manifest.kind.value == "deterministic"
