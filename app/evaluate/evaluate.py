"""Evaluate a checkpoint on its test split and OOD sets: metrics, model card and figures.

Every set is scored with the same S weight samples (one seed), so the numbers compare like for like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.bnn.predictive import decompose, predict
from app.bnn.spec import BAYESIAN_KINDS
from app.checkpoint.io import Checkpoint, write_manifest
from app.data.dataset import Split, TabularDataset
from app.evaluate import metrics as M
from app.evaluate.bound import bound_report
from app.evaluate.card import render_card

ECE_BINS = 10
ECE_BINNING = (
    f"{ECE_BINS} equal-width bins on [0, 1] of the predicted probability of the positive class (binary) "
    "or of the top label (multiclass), weighted by bin count"
)


@dataclass(frozen=True)
class Scores:
    """Per-row predictive of one set: probs (N, C) and uncertainty (N,) each, in nats."""

    probs: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    mutual_information: np.ndarray
    std: np.ndarray


def score_split(checkpoint: Checkpoint, split: Split, samples: int, seed: int) -> Scores:
    """Preprocess ``split`` with the checkpoint's own preprocessing and score it with a seeded generator."""
    model = checkpoint.model
    device = next(model.parameters()).device
    x = torch.as_tensor(checkpoint.manifest.preprocessing.transform(split.frame), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    predictive = predict(model, x, samples, generator)
    u = decompose(predictive)
    return Scores(
        probs=predictive.mean.double().cpu().numpy(),
        total=u.total.cpu().numpy(),
        aleatoric=u.aleatoric.cpu().numpy(),
        mutual_information=u.epistemic.cpu().numpy(),
        std=u.std.cpu().numpy(),
    )


@dataclass(frozen=True)
class ScoredSets:
    """The test split's and every OOD set's scores, from one seed and sample count."""

    samples: int
    seed: int
    test: Scores
    ood: dict[str, Scores]


def score_sets(
    checkpoint: Checkpoint, dataset: TabularDataset, samples: int | None = None, seed: int = 0
) -> ScoredSets:
    """Score the test split and every OOD set once (the metrics and the figures both read these)."""
    samples = checkpoint.model.num_samples(samples or checkpoint.manifest.default_samples)
    return ScoredSets(
        samples=samples,
        seed=seed,
        test=score_split(checkpoint, dataset.test, samples, seed),
        ood={name: score_split(checkpoint, split, samples, seed) for name, split in dataset.ood.items()},
    )


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}


def evaluate(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    samples: int | None = None,
    seed: int = 0,
    scored: ScoredSets | None = None,
) -> dict:
    """Metrics of ``checkpoint`` on ``dataset``'s test split and every OOD set (JSON-ready dict), from
    ``scored`` when given (else scored here with ``samples`` and ``seed``); Bayesian kinds also get the
    PAC-Bayes bound report on the training split under ``"bound"`` (see :mod:`app.evaluate.bound`)."""
    manifest = checkpoint.manifest
    scored = scored or score_sets(checkpoint, dataset, samples, seed)
    threshold = manifest.ood.threshold
    test = scored.test
    result: dict[str, Any] = {
        "split": "test",
        "samples": scored.samples,
        "seed": scored.seed,
        "ece_binning": ECE_BINNING,
        "parameter_count": manifest.parameter_count,
        "test": _rounded(
            {
                **M.classification_metrics(dataset.test.y, test.probs, n_bins=ECE_BINS),
                "mean_mutual_information": float(test.mutual_information.mean()),
                "flagged_rate": float((test.mutual_information > threshold).mean()),
            }
        ),
        "ood": {},
    }
    for name, split in dataset.ood.items():
        scores = scored.ood[name]
        entry: dict[str, Any] = {
            "mutual_information": _rounded(M.ood_metrics(test.mutual_information, scores.mutual_information).as_dict()),
            "predictive_std": _rounded(M.ood_metrics(test.std, scores.std).as_dict()),
            "flagged_rate": round(float((scores.mutual_information > threshold).mean()), 6),
        }
        known = split.y[split.y >= 0]
        if known.size == split.y.size and np.unique(known).size == len(dataset.labels):
            entry["classification"] = _rounded(M.classification_metrics(split.y, scores.probs, n_bins=ECE_BINS))
        result["ood"][name] = entry
    if checkpoint.model.spec.kind in BAYESIAN_KINDS:
        # The bound's own sample count (its default), the evaluation's seed: `sbnn bound` with that seed
        # reproduces this section.
        result["bound"] = bound_report(checkpoint, dataset, seed=scored.seed).as_dict()
    return result


def write_evaluation(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    result: dict,
    figures: bool = True,
    scored: ScoredSets | None = None,
) -> list[Path]:
    """Write metrics.json, card.md (and the figures, from ``scored`` when given, else scored again with the
    result's seed and samples) into the checkpoint folder; store the metrics in the manifest so a server can
    show them. Returns the written paths."""
    folder = checkpoint.path
    stamped = {**result, "evaluated": datetime.now(UTC).replace(microsecond=0).isoformat()}
    written = [folder / "metrics.json"]
    written[0].write_text(json.dumps(stamped, indent=2) + "\n")
    if figures:
        from app.evaluate.plots import write_reliability_diagram, write_score_histogram

        scored = scored or score_sets(checkpoint, dataset, result["samples"], result["seed"])
        title = f"{checkpoint.manifest.name}: test split"
        write_reliability_diagram(folder / "reliability.png", dataset.test.y, scored.test.probs, ECE_BINS, title=title)
        ood = {name: scores.mutual_information for name, scores in scored.ood.items()}
        write_score_histogram(
            folder / "ood_scores.png", scored.test.mutual_information, ood, threshold=checkpoint.manifest.ood.threshold
        )
        written += [folder / "reliability.png", folder / "ood_scores.png"]
    (folder / "card.md").write_text(render_card(checkpoint.manifest, result, figures=figures))
    written.append(folder / "card.md")
    write_manifest(folder, checkpoint.manifest.model_copy(update={"metrics": stamped}))
    return written
