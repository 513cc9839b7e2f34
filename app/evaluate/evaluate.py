"""Evaluate a checkpoint on its test split, its OOD sets and the stress suite: metrics, model card and figures.

Every set is scored as the server scores it (:mod:`app.evaluate.scoring`): the same bank of S weight samples
(one seed) and the layered gate, so the numbers compare like for like and match what a default request gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.bnn.spec import BAYESIAN_KINDS
from app.checkpoint.io import Checkpoint, write_manifest
from app.data.dataset import TabularDataset
from app.evaluate import metrics as M
from app.evaluate.bound import bound_report
from app.evaluate.card import render_card
from app.evaluate.gate import finite, gate_warnings, in_distribution_rates, not_accepted, set_report
from app.evaluate.novelty import risk_matched
from app.evaluate.scoring import BankScorer, GatedSet, gate_set
from app.evaluate.stress import stress_sets

ECE_BINS = 10
ECE_BINNING = (
    f"{ECE_BINS} equal-width bins on [0, 1] of the predicted probability of the positive class (binary) "
    "or of the top label (multiclass), weighted by bin count"
)


@dataclass(frozen=True)
class ScoredSets:
    """The test split, every OOD set and every stress set scored as served, from one bank (S samples, seed)."""

    samples: int
    seed: int
    test: GatedSet
    ood: dict[str, GatedSet]
    stress: dict[str, GatedSet]
    stress_descriptions: dict[str, str]


def score_sets(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    samples: int | None = None,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> ScoredSets:
    """Score the test split, every OOD set and the stress suite once, through the bank of ``samples`` draws
    from ``seed`` (by default the server's: the model's default samples, seed 0); ``on_step`` hears of each
    set as its scoring starts (progress only)."""
    manifest = checkpoint.manifest
    scorer = BankScorer(checkpoint.model, samples or manifest.default_samples, bank_seed=seed)

    def scored(what: str, frame: Any) -> GatedSet:
        if on_step is not None:
            on_step(f"scoring {what} ({len(frame):,} rows, {scorer.samples} samples)")
        return gate_set(scorer, checkpoint.gate, manifest.preprocessing, frame)

    suite = stress_sets(dataset.test.frame, dataset.train.frame, manifest.features)
    return ScoredSets(
        samples=scorer.samples,
        seed=seed,
        test=scored("the test split", dataset.test.frame),
        ood={name: scored(f"the OOD set {name}", split.frame) for name, split in dataset.ood.items()},
        stress={s.name: scored(f"the stress set {s.name}", s.frame) for s in suite},
        stress_descriptions={s.name: s.description for s in suite},
    )


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}


def _detection(test: Any, epistemic: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """OOD metrics of shifted rows' MI and predictive std against the test split's."""
    return {
        "mutual_information": _rounded(M.ood_metrics(finite(test.epistemic), finite(epistemic)).as_dict()),
        "predictive_std": _rounded(M.ood_metrics(finite(test.std), finite(std)).as_dict()),
    }


def evaluate(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    samples: int | None = None,
    seed: int = 0,
    scored: ScoredSets | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Metrics of ``checkpoint`` on ``dataset``'s test split and every OOD set (JSON-ready dict), from
    ``scored`` when given (else scored here with ``samples`` and ``seed``); Bayesian kinds also get the
    PAC-Bayes bound report on the training split under ``"bound"`` (see :mod:`app.evaluate.bound`).
    ``on_step`` hears of each long step as it starts (progress only)."""
    manifest = checkpoint.manifest
    scored = scored or score_sets(checkpoint, dataset, samples, seed, on_step=on_step)
    gate = checkpoint.gate
    test, test_predictions = scored.test, scored.test.predictions
    result: dict[str, Any] = {
        "split": "test",
        "samples": scored.samples,
        "seed": scored.seed,
        "ece_binning": ECE_BINNING,
        "parameter_count": manifest.parameter_count,
        "test": _rounded(
            {
                **M.classification_metrics(dataset.test.y, test_predictions.probs, n_bins=ECE_BINS),
                "mean_mutual_information": float(test_predictions.epistemic.mean()),
                "not_accepted_rate": not_accepted(test),
            }
        ),
        "ood": {},
    }
    for name, split in dataset.ood.items():
        shifted = scored.ood[name].predictions
        entry: dict[str, Any] = {
            **_detection(test_predictions, shifted.epistemic, shifted.std),
            "not_accepted_rate": round(not_accepted(scored.ood[name]), 6),
        }
        if (changed := split.changed_rows) is not None:  # the rows the alteration changed, apart
            entry["changed_rows"] = {
                "rows": int(changed.sum()),
                **_detection(test_predictions, shifted.epistemic[changed], shifted.std[changed]),
            }
        if test_predictions.probs.shape[1] == 2:  # a score's AUROC beyond the predicted risk's (app.evaluate.novelty)
            scores = {"mutual_information": "epistemic", "total_entropy": "total", "predictive_std": "std"}
            entry["risk_matched"] = risk_matched(
                test_predictions.probs[:, 1],
                shifted.probs[:, 1],
                {name: getattr(test_predictions, field) for name, field in scores.items()},
                {name: getattr(shifted, field) for name, field in scores.items()},
            )
        known = split.y[split.y >= 0]
        rows = np.isfinite(shifted.probs).all(1)
        if known.size == split.y.size and np.unique(known).size == len(dataset.labels) and rows.all():
            entry["classification"] = _rounded(M.classification_metrics(split.y, shifted.probs, n_bins=ECE_BINS))
        result["ood"][name] = entry
    ood_reports = {name: set_report(gate, test, s) for name, s in scored.ood.items()}
    result["gate"] = {
        "target_fpr": manifest.gate.target_fpr,
        "test": in_distribution_rates(test).model_dump(),
        "ood": ood_reports,
        "stress": {
            name: set_report(gate, test, s, scored.stress_descriptions[name]) for name, s in scored.stress.items()
        },
        "warnings": gate_warnings(ood_reports),
    }
    if checkpoint.model.spec.kind in BAYESIAN_KINDS:
        # The bound's own sample count (its default), the evaluation's seed: `sbnn bound` with that seed
        # reproduces this section.
        result["bound"] = bound_report(checkpoint, dataset, seed=scored.seed, on_step=on_step).as_dict()
    return result


def write_evaluation(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    result: dict,
    figures: bool = True,
    scored: ScoredSets | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write metrics.json, card.md (and the figures, from ``scored`` when given, else scored again with the
    result's seed and samples) into the checkpoint folder; store the metrics in the manifest so a server can
    show them. Returns the written paths; ``on_step`` hears of each long step (progress only)."""
    folder = checkpoint.path
    stamped = {**result, "evaluated": datetime.now(UTC).replace(microsecond=0).isoformat()}
    written = [folder / "metrics.json"]
    written[0].write_text(json.dumps(stamped, indent=2) + "\n")
    if figures:
        from app.evaluate.plots import write_reliability_diagram, write_score_histogram

        scored = scored or score_sets(checkpoint, dataset, result["samples"], result["seed"], on_step=on_step)
        if on_step is not None:
            on_step("drawing the figures")
        title = f"{checkpoint.manifest.name}: test split"
        test = scored.test.predictions
        write_reliability_diagram(folder / "reliability.png", dataset.test.y, test.probs, ECE_BINS, title=title)
        ood = {name: finite(s.predictions.epistemic) for name, s in scored.ood.items()}
        write_score_histogram(
            folder / "ood_scores.png", test.epistemic, ood, threshold=checkpoint.manifest.gate.epistemic.threshold
        )
        written += [folder / "reliability.png", folder / "ood_scores.png"]
    (folder / "card.md").write_text(render_card(checkpoint.manifest, result, figures=figures))
    written.append(folder / "card.md")
    write_manifest(folder, checkpoint.manifest.model_copy(update={"metrics": stamped}))
    return written
