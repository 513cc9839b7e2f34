"""From a split sequence data set to a saved checkpoint: preprocess the steps, train the LSTM, fit and
calibrate the layered gate on sequences, save.

The steps are preprocessed as flat rows are (fitted on the training split's steps), padded on the right to
the data set's ``max_length`` keeping the last steps; a regression target is standardised with the training
split's mean and std (stored in the manifest, so every answer is in the target's own unit). The gate screens
every step's raw values (bounds, support), measures the density on each sequence's summary (the mean of its
preprocessed steps beside its last step) and takes the epistemic score of the served bank: the mutual
information for a classifier, the epistemic variance for a regression.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.bnn.network import parameter_count
from app.checkpoint.io import save_checkpoint
from app.checkpoint.manifest import (
    FORMAT_VERSION,
    Manifest,
    SequenceSchema,
    WeightsInfo,
)
from app.data.preprocess import Preprocessing
from app.data.sequence import SequenceDataset, SequenceSplit
from app.evaluate.sequence_scoring import SequenceBankScorer, score_sequences, sequence_inputs
from app.gate.gate import GateTensors, Screening
from app.gate.sequence import screen_sequences, summarise_steps
from app.gate.spec import GateSpec
from app.train.calibrate import SERVER_BANK_SEED, Calibration, calibrate_gate, check_training_bounds
from app.train.config import TrainConfig
from app.train.loop import EpochLog, TrainResult
from app.train.pipeline import task_info, training_info, training_split_targets
from app.train.sequence_loop import train_sequence


def _inputs(preprocessing: Preprocessing, split: SequenceSplit, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    x, lengths, _ = sequence_inputs(preprocessing, split.frame, split.lengths, max_length)
    return x, lengths


def build_sequence_gate(
    scorer: SequenceBankScorer,
    dataset: SequenceDataset,
    preprocessing: Preprocessing,
    target_fpr: float,
    train_inputs: tuple[np.ndarray, np.ndarray],
    on_step: Callable[[str], None] | None = None,
) -> tuple[GateSpec, GateTensors]:
    """The layered gate of a trained sequence network, calibrated on its served bank (``scorer``);
    ``train_inputs``: the training split as the network took it, (x (N, T, d), lengths (N,))."""
    screening = Screening(dataset.features, preprocessing)
    numeric, codes = preprocessing.raw_values(dataset.train.frame)
    check_training_bounds(screen_sequences(screening, numeric, codes, np.asarray(dataset.train.lengths)))
    x_train, lengths_train = train_inputs
    calibration = Calibration(
        screening=screening,
        density_input=summarise_steps(x_train, lengths_train),
        train_epistemic=lambda: scorer(x_train, lengths_train).epistemic,
        score=lambda density, split: score_sequences(scorer, screening, density, preprocessing, split),
        samples=scorer.samples,
        bank_seed=scorer.bank_seed,
        density_kind="sequence_mean_and_last_step",
        epistemic_score="epistemic_variance" if dataset.is_regression else "mutual_information",
    )
    return calibrate_gate(calibration, dataset, target_fpr, on_step)


def train_sequence_checkpoint(
    dataset: SequenceDataset,
    config: TrainConfig,
    out: str | Path,
    name: str | None = None,
    version: str = "1",
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[Manifest, TrainResult]:
    """Train an LSTM of ``config.kind`` on ``dataset`` and write a checkpoint folder ``out``."""
    out = Path(out)
    preprocessing = Preprocessing.fit(dataset.train.frame, dataset.features)
    x_train, lengths_train = _inputs(preprocessing, dataset.train, dataset.max_length)
    x_val, lengths_val = _inputs(preprocessing, dataset.val, dataset.max_length)
    y_train, y_val, scale = training_split_targets(dataset)
    classes = None if dataset.labels is None else len(dataset.labels)
    result = train_sequence(x_train, lengths_train, y_train, x_val, lengths_val, y_val, classes, config, on_epoch)
    model = result.model

    samples = model.num_samples(config.default_samples)
    scorer = SequenceBankScorer(
        model,
        samples,
        SERVER_BANK_SEED,
        max_length=dataset.max_length,
        target_mean=0.0 if scale is None else scale.mean,
        target_std=1.0 if scale is None else scale.std,
    )
    gate, gate_tensors = build_sequence_gate(
        scorer, dataset, preprocessing, config.target_fpr, (x_train, lengths_train), on_step
    )
    task = task_info(dataset.target, dataset.labels, scale, dataset.target_unit)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name or out.name,
        version=version,
        created=datetime.now(UTC).replace(microsecond=0),
        kind=config.kind,
        network=model.spec,
        sequence=SequenceSchema(max_length=dataset.max_length, time=dataset.time),
        ranks=model.spec.map_ranks(),
        parameter_count=parameter_count(model),
        task=task,
        features=list(dataset.features),
        preprocessing=preprocessing,
        gate=gate,
        default_samples=samples,
        training=training_info(config, result),
        data=dataset.provenance,
        weights=WeightsInfo(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
    )
    if on_step is not None:
        on_step(f"saving {out}")
    return save_checkpoint(out, model, manifest, gate_tensors), result
