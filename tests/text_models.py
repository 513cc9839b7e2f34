"""A tiny text (Transformer) checkpoint on a slice of the Rotten Tomatoes snippets, for the tests that train,
serve or export one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from app.bnn.spec import LayerKind
from app.data.text import TextDataset

MAX_LENGTH = 32


def small(dataset: TextDataset, rows: int) -> TextDataset:
    """Every split and OOD set cut to its first ``rows`` texts (the training split to 4 × ``rows``)."""
    cut = np.arange(rows)
    return replace(
        dataset,
        train=dataset.train.select(np.arange(4 * rows)),
        val=dataset.val.select(cut),
        test=dataset.test.select(cut),
        ood={name: split.select(cut) for name, split in dataset.ood.items()},
    )


def train_tiny_text(out: Path, kind: LayerKind = LayerKind.LOWRANK) -> Path:
    """A 2-epoch Transformer of d_model 16 (vocabulary 600, 32 tokens, S = 8) trained to ``out``."""
    from app.data.rotten_tomatoes import load_rotten_tomatoes
    from app.train.config import TrainConfig
    from app.train.text_pipeline import train_text_checkpoint

    config = TrainConfig(
        kind=kind,
        hidden=[16, 16],
        rank=4,
        epochs=2,
        kl_warmup_epochs=1,
        beta=0.001,
        val_samples=4,
        default_samples=8,
        activation="gelu",
        batch_size=64,
    )
    train_text_checkpoint(small(load_rotten_tomatoes(), 200), config, out, vocab_size=600, max_length=MAX_LENGTH)
    return out


def offline_scores(folder: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C) of the frozen bank the gate was calibrated on, density scores (N,)) of ``texts`` as
    training and evaluation score them: what a server must answer for the checkpoint in ``folder``."""
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.sequence_scoring import SequenceBankScorer
    from app.evaluate.text_scoring import encoder_features

    checkpoint = load_checkpoint(folder)
    manifest = checkpoint.manifest
    assert checkpoint.encoder is not None and manifest.text is not None
    encoded = checkpoint.encoder.encode(texts)
    calibration = manifest.gate.calibration
    scorer = SequenceBankScorer(
        checkpoint.model, calibration.samples, calibration.bank_seed, max_length=manifest.text.max_length
    )
    probs = scorer(encoded.ids, encoded.lengths).probs
    return probs, checkpoint.gate.density(encoder_features(checkpoint.model, encoded))  # type: ignore[arg-type]
