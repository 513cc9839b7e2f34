from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sequence_tables import write_visits  # noqa: E402

from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.data.sequence import SequenceDataset  # noqa: E402
from app.data.sequence_table import load_sequence_dataset, load_sequence_table  # noqa: E402
from app.evaluate.sequence_evaluate import (  # noqa: E402
    evaluate_sequences,
    score_sequence_sets,
    write_sequence_evaluation,
)
from app.train.config import TrainConfig  # noqa: E402
from app.train.sequence_pipeline import train_sequence_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _trained(folder: Path, continuous: bool) -> tuple[Path, SequenceDataset]:
    table = write_visits(folder / "visits.csv", continuous, patients=90, seed=0)
    ood = write_visits(folder / "shifted.csv", continuous, patients=30, seed=1, shift=3.0)
    dataset = load_sequence_table(table, "y", "patient", "day", ood_path=ood, units={"lab": "mg/dL"})
    options = {"hidden": [8], "rank": 3, "epochs": 3, "kl_warmup_epochs": 1, "default_samples": 16}
    config = TrainConfig(**options, val_samples=4, batch_size=32, device="cpu")
    train_sequence_checkpoint(dataset, config, folder / "m")
    return folder / "m", dataset


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder, dataset = _trained(tmp_path_factory.mktemp("seqeval"), continuous=True)
    checkpoint = load_checkpoint(folder)
    scored = score_sequence_sets(checkpoint, dataset)
    result = evaluate_sequences(checkpoint, dataset, scored=scored)
    write_sequence_evaluation(checkpoint, dataset, result, scored=scored)
    return folder, result


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder, dataset = _trained(tmp_path_factory.mktemp("seqclf"), continuous=False)
    checkpoint = load_checkpoint(folder)
    result = evaluate_sequences(checkpoint, dataset)
    write_sequence_evaluation(checkpoint, dataset, result, figures=False)
    return folder, result


def test_a_regression_reports_its_metrics_in_the_target_unit(regression) -> None:
    folder, result = regression
    stored = json.loads((folder / "metrics.json").read_text())
    test = stored["test"]
    for key in ("rmse", "mae", "nll", "crps", "calibration_error", "mean_epistemic_variance"):
        assert np.isfinite(test[key]), key
    assert test["rmse"] > 0 and test["mae"] > 0 and test["crps"] > 0
    for level in (50, 90, 95):
        assert 0 <= test[f"picp_{level}"] <= 1 and test[f"mpiw_{level}"] > 0
    assert test["mpiw_50"] < test["mpiw_90"] < test["mpiw_95"]
    # Targets near 10 (2 × lab): an RMSE in the target's unit, not the standardised one's.
    assert test["rows"] == stored["sequence"]["rows"]["test"]
    assert stored["task"] == "regression" and stored["target"] == "y" and stored["samples"] == 16
    coverage = stored["coverage"]
    nominal = np.asarray(coverage["nominal"])
    assert np.all(np.diff(nominal) > 0) and set(coverage) >= {"nominal", "test", "val", "ood:ood-file"}
    observed = np.asarray(coverage["test"])
    assert observed.shape == nominal.shape and np.all(np.diff(observed) >= 0) and (0 <= observed).all()


def test_every_ood_score_is_ranked_against_the_test_split(regression) -> None:
    _, result = regression
    entry = result["ood"]["ood-file"]
    assert set(entry["scores"]) == {"epistemic_variance", "total_variance", "density", "gate"}
    for metrics in entry["scores"].values():
        assert 0 <= metrics["auroc"] <= 1 and 0 <= metrics["fpr_at_95_tpr"] <= 1
        assert metrics["n_ood"] == entry["rows"] == 30
    assert set(entry["regression"]) >= {"rmse", "nll", "picp_90"} and entry["regression"]["rmse"] > 0
    assert result["ood"]["ood-file"]["scores"]["density"]["auroc"] > 0.8  # labs 3 sd out: the density sees it
    gate = result["gate"]
    assert set(gate["ood"]["ood-file"]["auroc"]) == {"support", "density", "epistemic", "gate"}
    assert gate["epistemic_score"] == "epistemic_variance" and isinstance(gate["warnings"], list)


def test_the_gate_rates_match_training_with_the_served_bank(regression) -> None:
    folder, result = regression
    manifest = load_checkpoint(folder).manifest  # still loads, and holds the metrics
    for split in ("val", "test"):
        assert result["gate"][split]["not_accepted"] == pytest.approx(manifest.gate.achieved[split].not_accepted)
    assert manifest.metrics["test"]["rmse"] == result["test"]["rmse"] and "evaluated" in manifest.metrics


def test_the_card_names_the_target_its_unit_and_the_schema(regression) -> None:
    folder, result = regression
    card = (folder / "card.md").read_text()
    manifest = load_checkpoint(folder).manifest
    assert "`y`" in card and f"Max length: **{manifest.sequence.max_length} steps**" in card
    assert "`lab` (mg/dL)" in card and "## OOD detection" in card and "`ood-file`" in card
    for warning in result["gate"]["warnings"] + manifest.gate.warnings:
        assert warning in card
    for figure in ("forecast.png", "coverage.png", "ood_scores.png"):
        assert (folder / figure).stat().st_size > 0 and f"]({figure})" in card


def test_a_classifier_reports_the_mlp_metrics_and_no_figures_when_asked(classifier) -> None:
    folder, result = classifier
    test = result["test"]
    assert {"auroc", "nll", "ece", "brier", "accuracy"} <= set(test) and 0 <= test["auroc"] <= 1
    assert test["nll"] > 0 and 0 <= test["ece"] <= 1
    assert set(result["ood"]["ood-file"]["scores"]) == {"mutual_information", "total_entropy", "density", "gate"}
    card = (folder / "card.md").read_text()
    assert not list(folder.glob("*.png")) and "## Figures" not in card and "(0 / 1)" in card


def test_sbnn_evaluate_prints_a_sequence_summary(regression) -> None:
    folder, _ = regression
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "evaluate", str(folder), "--no-figures"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "RMSE" in done.stdout and "PICP90" in done.stdout and "ood-file" in done.stdout
    assert "epistemic var." in done.stdout and "metrics.json" in done.stdout


def test_the_data_rebuilds_from_the_provenance(regression) -> None:
    folder, _ = regression
    manifest = load_checkpoint(folder).manifest
    assert set(load_sequence_dataset(manifest.data).ood) == {"ood-file"}
