from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sequence_tables import write_visits  # noqa: E402

from app.bnn.recurrent import BayesianLSTM  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.checkpoint.manifest import Manifest, TaskType  # noqa: E402
from app.data.sequence_table import load_sequence_table  # noqa: E402
from app.evaluate.sequence_scoring import SequenceBankScorer, score_sequences  # noqa: E402
from app.train.config import TrainConfig  # noqa: E402
from app.train.sequence_pipeline import train_sequence_checkpoint  # noqa: E402


def _config(**extra: object) -> TrainConfig:
    options = {"hidden": [8], "rank": 3, "epochs": 3, "kl_warmup_epochs": 1, "default_samples": 16}
    return TrainConfig(**{**options, "val_samples": 4, "batch_size": 32, "device": "cpu", **extra})


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, object]:
    folder = tmp_path_factory.mktemp("seq")
    dataset = load_sequence_table(write_visits(folder / "visits.csv", continuous=True), "y", "patient", "day")
    manifest, _ = train_sequence_checkpoint(dataset, _config(), folder / "m")
    return manifest, folder / "m", dataset


def test_a_regression_checkpoint_carries_its_sequence_schema_scale_and_gate(regression) -> None:
    manifest, folder, dataset = regression
    assert manifest.task.type is TaskType.REGRESSION and manifest.task.labels is None
    y = np.asarray(dataset.train.y)
    assert manifest.task.scale.mean == pytest.approx(y.mean()) and manifest.task.scale.std == pytest.approx(y.std())
    assert manifest.sequence.max_length == dataset.max_length and manifest.sequence.time == "day"
    assert manifest.network.architecture == "lstm" and manifest.ranks == manifest.network.map_ranks()
    d = manifest.network.in_features
    assert (manifest.gate.density.input, manifest.gate.density.dimension) == ("sequence_mean_and_last_step", 2 * d)
    assert manifest.gate.epistemic.score == "epistemic_variance"
    assert manifest.gate.calibration.samples == manifest.default_samples == 16
    assert set(manifest.gate.achieved) == {"val", "test"}

    checkpoint = load_checkpoint(folder)
    assert isinstance(checkpoint.model, BayesianLSTM) and checkpoint.manifest == manifest
    # The reloaded network answers as the trained one did: the gate's reference came from the same bank.
    scorer = SequenceBankScorer(
        checkpoint.model, 16, 0, max_length=manifest.sequence.max_length,
        target_mean=manifest.task.scale.mean, target_std=manifest.task.scale.std,
    )  # fmt: skip
    scored = score_sequences(
        scorer, checkpoint.gate.screening, checkpoint.gate.density, manifest.preprocessing, dataset.val
    )
    result = checkpoint.gate.decide(scored.screen, scored.density, scored.predictions.epistemic)
    assert np.mean(~result.accepted) == pytest.approx(manifest.gate.achieved["val"].not_accepted)
    assert np.nanmean(np.abs(scored.predictions.mean - dataset.val.y)) < 2 * float(np.std(dataset.val.y))


def test_a_classifier_checkpoint_scores_mutual_information(tmp_path: Path) -> None:
    dataset = load_sequence_table(write_visits(tmp_path / "v.csv", continuous=False), "y", "patient", "day")
    manifest, _ = train_sequence_checkpoint(dataset, _config(kind="fullrank"), tmp_path / "m")
    assert manifest.task.type is TaskType.BINARY and manifest.task.labels == ["0", "1"]
    assert manifest.gate.epistemic.score == "mutual_information" and manifest.ranks == [None] * 3
    assert isinstance(load_checkpoint(tmp_path / "m").model, BayesianLSTM)


def test_the_manifest_refuses_a_sequence_network_without_its_schema_or_with_a_row_density(regression) -> None:
    manifest, _, _ = regression
    raw = json.loads(manifest.model_dump_json())
    without = {**raw, "sequence": None}
    with pytest.raises(ValueError, match="needs the sequence section"):
        Manifest.model_validate(without)
    row_density = json.loads(json.dumps(raw))
    row_density["gate"]["density"]["input"] = "row"
    with pytest.raises(ValueError, match="the gate's density measures row"):
        Manifest.model_validate(row_density)
    labelled = json.loads(json.dumps(raw))
    labelled["task"]["labels"] = ["a", "b"]
    with pytest.raises(ValueError, match="a regression task has a scale and no labels"):
        Manifest.model_validate(labelled)
    wrong_score = json.loads(json.dumps(raw))
    wrong_score["gate"]["epistemic"]["score"] = "mutual_information"
    with pytest.raises(ValueError, match="the task needs epistemic_variance"):
        Manifest.model_validate(wrong_score)
