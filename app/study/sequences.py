"""The paper's recurrent comparison, re-measured: ``sbnn compare --dataset pm25|pbcseq``.

Low-rank against full-rank Bayes by Backprop, a deep ensemble and MC dropout, every one a 2-layer LSTM of 64
(the paper's), trained with the same budget over several seeds on one fixed split, plus the low-rank rank
ablation at seed 0. Each run trains into its folder with
:func:`~app.train.sequence_pipeline.train_sequence_checkpoint` (the gate calibrated on the served bank), is
evaluated with :func:`~app.evaluate.sequence_evaluate.evaluate_sequences` and leaves ``result.json`` and
``scores.npz`` there, exactly as a tabular run (:mod:`app.study.runs`), so an interrupted study resumes.
The report is :mod:`app.study.sequence_report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.bnn.spec import MAP_RANK, LayerKind
from app.data.sequence import SequenceDataset
from app.data.text import TextDataset
from app.study.design import EVALUATION_SEED, RunSpec, StudyPlan, Variant
from app.study.runs import (
    SCORES_FILE,
    Reporter,
    RunOutcome,
    finished_run,
    record_run,
    run_comparison,
    trained_or_train,
)
from app.train.loop import EpochLog

SEQUENCE_COMPARISON: tuple[Variant, ...] = (
    Variant("lowrank", {"kind": LayerKind.LOWRANK}, description="singular BNN: every gate map and the head low rank"),
    Variant("fullrank", {"kind": LayerKind.FULLRANK}, description="mean-field Bayes by Backprop"),
    Variant("ensemble", {"kind": LayerKind.ENSEMBLE, "members": 5}, description="deep ensemble of 5"),
    Variant("mcdropout", {"kind": LayerKind.MCDROPOUT}, description="MC dropout, p = 0.1 on the hidden state"),
)
RANK = MAP_RANK  # the low-rank runs' map rank (the paper's r = 16 for its recurrent and attention maps)


def make_sequence_plan(
    seeds: int | None = None, epochs: int | None = None, ablation: bool = True, quick: bool = False
) -> StudyPlan:
    """The recurrent study: 3 seeds (quick: 2), 40 epochs (quick: 3), S = 150 (the paper's for its LSTM;
    quick: 32), ranks 2, 4, 8, 16 and 32 at seed 0 (quick: 2 and 16)."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    chosen = tuple(range(seeds if seeds is not None else (2 if quick else 3)))
    return StudyPlan(
        seeds=chosen,
        ablation_seeds=chosen[:1] if ablation else (),
        variants=SEQUENCE_COMPARISON,
        ablation_ranks=() if not ablation else ((2, 16) if quick else (2, 4, 8, 16, 32)),
        epochs=epochs if epochs is not None else (3 if quick else 40),
        hidden=(64, 64),
        samples=32 if quick else 150,
        shared={"rank": RANK, "kl_warmup_epochs": 1 if quick else 10, "patience": 10},
    )


def score_arrays(scored: Any, dataset: SequenceDataset | TextDataset) -> dict[str, np.ndarray]:
    """Per-sequence test and OOD scores for later figures: targets, the predictive mean (regression) or the
    probabilities (classifier), the epistemic score and the gate's ranking."""
    test = scored.test.predictions
    arrays: dict[str, np.ndarray] = {
        "test_y": np.asarray(dataset.test.y),
        "test_epistemic": test.epistemic,
        "test_gate": scored.test.ranking,
    }
    arrays["test_mean" if dataset.is_regression else "test_probs"] = test.mean if dataset.is_regression else test.probs
    for name, gated in scored.ood.items():
        arrays[f"ood_epistemic__{name}"] = gated.predictions.epistemic
        arrays[f"ood_gate__{name}"] = gated.ranking
    return arrays


def run_sequence_one(
    run: RunSpec, dataset: SequenceDataset, on_epoch: Callable[[EpochLog], None] | None = None
) -> RunOutcome:
    """Train ``run`` into its folder and evaluate it, or read its result if it already finished."""
    from app.train.sequence_pipeline import train_sequence_checkpoint

    return train_and_evaluate(run, dataset, train_sequence_checkpoint, on_epoch)


def train_and_evaluate(
    run: RunSpec,
    dataset: SequenceDataset | TextDataset,
    train: Callable[..., tuple[Any, Any]],
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> RunOutcome:
    """``train`` (a ``train_*_checkpoint`` of the data set's kind) ``run`` into its folder, evaluate it as served
    and leave its records, or read its result if it already finished."""
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.sequence_evaluate import evaluate_sequences, score_sequence_sets

    started = time.perf_counter()
    if (done := finished_run(run, started)) is not None:
        return done
    manifest, trained, resumed = trained_or_train(run, train, dataset, on_epoch)
    checkpoint = load_checkpoint(run.folder)
    scored = score_sequence_sets(checkpoint, dataset, seed=EVALUATION_SEED)
    metrics = evaluate_sequences(checkpoint, dataset, scored=scored)
    with open(run.folder / SCORES_FILE, "wb") as handle:
        np.savez_compressed(handle, **score_arrays(scored, dataset))
    return record_run(run, manifest, trained, metrics, started, resumed)


def run_sequence_comparison(
    plan: StudyPlan, dataset: SequenceDataset, out: str | Path, ablation: bool = True, reporter: Reporter | None = None
) -> list[RunOutcome]:
    """Train and evaluate every run of ``plan`` under ``out`` (skipping finished ones), in order."""
    return run_comparison(plan, dataset, out, ablation, reporter, run_one=run_sequence_one)
