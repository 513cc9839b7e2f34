"""Evaluate a sequence (LSTM) or text (Transformer) checkpoint on its test and validation splits and its OOD
sets: metrics, card, figures.

The counterpart of :mod:`app.evaluate.evaluate` for checkpoints with a ``sequence`` or ``text`` section, and for
regression MLPs (whose sets are tables, scored row by row with :func:`app.evaluate.scoring.score_set`): the regression
report, its figures and card are the same for both. Every set is scored
as the server would score it (:func:`app.evaluate.sequence_scoring.score_sequences` through the frozen bank of
S draws from one seed, then the checkpoint's layered gate), so the gate's rates here match the manifest's when
the defaults are used. A regression is reported in the target's own unit; its metrics (NLL, CRPS, coverage) use
every one of the S Gaussians of the mixture, kept from that same scoring pass rather than drawn again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.bnn.regression import GaussianPredictive
from app.checkpoint.io import Checkpoint, write_manifest
from app.data.dataset import Split, TabularDataset
from app.data.sequence import SequenceDataset, SequenceSplit
from app.data.text import TextDataset, TextSplit
from app.evaluate import metrics as M
from app.evaluate.evaluate import ECE_BINNING, ECE_BINS, _rounded
from app.evaluate.gate import finite, gate_warnings, in_distribution_rates, not_accepted, set_report
from app.evaluate.regression import CALIBRATION_LEVELS, RegressionSummary, coverage_curve, regression_metrics, summarise
from app.evaluate.regression_scoring import RegressionBankScorer
from app.evaluate.scoring import GatedSet, gated, score_set
from app.evaluate.sequence_scoring import SequenceBankScorer, score_sequences

FORECAST_ROWS = 200  # consecutive test sequences drawn in forecast.png
OOD_REGRESSION_KEYS = ("rmse", "mae", "nll", "crps", "picp_90", "mpiw_90", "rows")


@dataclass(frozen=True)
class Summarised:
    """A regression set's mixture summary over ``rows`` (M,): its sequences with a prediction and a known
    target (indices into the set), in the target's unit."""

    summary: RegressionSummary
    rows: np.ndarray


@dataclass(frozen=True)
class ScoredSequences:
    """The test and validation splits and every OOD set scored as served, from one bank (S samples, seed);
    ``summaries`` (regression only): ``"test"``, ``"val"`` and ``"ood:<name>"`` -> :class:`Summarised` where
    any sequence has a known target."""

    samples: int
    seed: int
    test: GatedSet
    val: GatedSet
    ood: dict[str, GatedSet]
    summaries: dict[str, Summarised] = field(default_factory=dict)


def _scorer(checkpoint: Checkpoint, samples: int | None, seed: int) -> SequenceBankScorer | RegressionBankScorer:
    manifest = checkpoint.manifest
    scale = manifest.task.scale
    if manifest.text is not None:  # a Transformer over token ids
        return SequenceBankScorer(
            checkpoint.model,  # type: ignore[arg-type]  # a Transformer: the manifest has a text section
            samples or manifest.default_samples,
            seed,
            max_length=manifest.text.max_length,
        )
    if manifest.sequence is None:  # a regression MLP
        assert scale is not None, "neither a sequence checkpoint nor a regression"
        return RegressionBankScorer(
            checkpoint.model,  # type: ignore[arg-type]  # an MLP: the manifest has no sequence section
            samples or manifest.default_samples,
            seed,
            target_mean=scale.mean,
            target_std=scale.std,
            keep_mixture=True,
        )
    scorer = SequenceBankScorer(
        checkpoint.model,  # type: ignore[arg-type]  # an LSTM: the manifest has a sequence section
        samples or manifest.default_samples,
        seed,
        max_length=manifest.sequence.max_length,
        target_mean=0.0 if scale is None else scale.mean,
        target_std=1.0 if scale is None else scale.std,
        keep_mixture=True,  # a regression's metrics use every one of the very draws the gate saw
    )
    return scorer


def _summarised(scored: GatedSet, split: SequenceSplit | Split) -> Summarised | None:
    """The mixture (S, P, 1) of the P predicted sequences, in the target's unit, summarised against the known
    targets (None: none known)."""
    y = np.asarray(split.y, dtype=np.float64)
    predicted = np.isfinite(scored.predictions.mean)  # score_sequences ran the bank on exactly these, in order
    mixture = scored.predictions.mixture
    if mixture is None or not predicted.any():
        return None
    if mixture.means.shape[1] != int(predicted.sum()):  # the bank ran on other rows than those predicted
        raise ValueError(f"{mixture.means.shape[1]} sequences scored but {int(predicted.sum())} have a prediction")
    known = np.isfinite(y[predicted])
    if not known.any():
        return None
    mask = torch.as_tensor(known, device=mixture.means.device)
    means, variances = mixture.means[:, mask], mixture.variances[:, mask]
    rows = np.flatnonzero(predicted)[known]
    return Summarised(summarise(GaussianPredictive(means, variances), y[rows]), rows)


def score_sequence_sets(
    checkpoint: Checkpoint,
    dataset: SequenceDataset | TabularDataset | TextDataset,
    samples: int | None = None,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> ScoredSequences:
    """Score the test and validation splits and every OOD set once, through the bank of ``samples`` draws from
    ``seed`` (by default the server's: the model's default samples, seed 0) and the checkpoint's gate;
    ``on_step`` hears of each set as its scoring starts (progress only)."""
    manifest, gate = checkpoint.manifest, checkpoint.gate
    scorer = _scorer(checkpoint, samples, seed)
    summaries: dict[str, Summarised] = {}

    def scored(key: str, what: str, split: SequenceSplit | Split | TextSplit) -> GatedSet:
        if isinstance(split, TextSplit):
            from app.evaluate.text_scoring import score_texts  # imports tokenizers: only for text models

            assert checkpoint.encoder is not None  # a text checkpoint loads its tokenizer
            if on_step is not None:
                on_step(f"scoring {what} ({len(split):,} texts, {scorer.samples} samples)")
            encoded = checkpoint.encoder.encode(split.texts.tolist())
            raw = score_texts(scorer, gate.screening, gate.density, encoded)  # type: ignore[arg-type]
        elif isinstance(split, Split):  # a regression MLP's table
            if on_step is not None:
                on_step(f"scoring {what} ({len(split.y):,} rows, {scorer.samples} samples)")
            raw = score_set(scorer, gate.screening, gate.density, manifest.preprocessing, split.frame)
        else:
            if on_step is not None:
                on_step(f"scoring {what} ({len(split):,} sequences, {scorer.samples} samples)")
            raw = score_sequences(scorer, gate.screening, gate.density, manifest.preprocessing, split)
        result = gated(gate, raw)
        if scorer.regression and (summary := _summarised(result, split)) is not None:
            summaries[key] = summary
        return result

    return ScoredSequences(
        samples=scorer.samples,
        seed=seed,
        test=scored("test", "the test split", dataset.test),
        val=scored("val", "the validation split", dataset.val),
        ood={name: scored(f"ood:{name}", f"the OOD set {name}", s) for name, s in dataset.ood.items()},
        summaries=summaries,
    )


def _detection_scores(scored: GatedSet, regression: bool) -> dict[str, np.ndarray]:
    """Every OOD score of a set (N,), larger = more unlike training: the epistemic and total uncertainty, the
    gate's density and its combined ranking."""
    p = scored.predictions
    names = ("epistemic_variance", "total_variance") if regression else ("mutual_information", "total_entropy")
    return {
        names[0]: finite(p.epistemic),
        names[1]: finite(p.total),
        "density": finite(scored.density),
        "gate": scored.ranking,
    }


def _regression_entry(summarised: Summarised | None) -> dict[str, Any] | None:
    return None if summarised is None else _rounded(regression_metrics(summarised.summary, summarised.summary.y))


def evaluate_sequences(
    checkpoint: Checkpoint,
    dataset: SequenceDataset | TabularDataset | TextDataset,
    samples: int | None = None,
    seed: int = 0,
    scored: ScoredSequences | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Metrics of a sequence ``checkpoint`` on ``dataset`` (JSON-ready dict), from ``scored`` when given (else
    scored here with ``samples`` and ``seed``): the task's metrics on test and val (a regression's in the
    target's unit, with the coverage curve), per OOD set the task's metrics where targets are known and the
    AUROC, AUPR and FPR@95%TPR of every OOD score against the test split, and the gate's rates."""
    manifest, gate = checkpoint.manifest, checkpoint.gate
    scored = scored or score_sequence_sets(checkpoint, dataset, samples, seed, on_step=on_step)
    regression = dataset.is_regression
    result: dict[str, Any] = {
        "task": manifest.task.type.value,
        "target": manifest.task.target,
        "unit": manifest.task.unit,
        "split": "test",
        "samples": scored.samples,
        "seed": scored.seed,
        "parameter_count": manifest.parameter_count,
    }
    if manifest.sequence is not None:
        result["sequence"] = {"max_length": manifest.sequence.max_length, "rows": manifest.data.rows}
    if manifest.text is not None:
        result["text"] = {
            "max_length": manifest.text.max_length,
            "vocab_size": manifest.text.vocab_size,
            "rows": manifest.data.rows,
        }
    splits = {"test": (scored.test, dataset.test), "val": (scored.val, dataset.val)}
    for key, (s, split) in splits.items():
        if regression:
            entry = _regression_entry(scored.summaries.get(key)) or {}
        else:
            entry = _rounded(M.classification_metrics(split.y, s.predictions.probs, n_bins=ECE_BINS))
            entry["mean_mutual_information"] = round(float(np.nanmean(s.predictions.epistemic)), 6)
        result[key] = {**entry, "not_accepted_rate": round(not_accepted(s), 6)}
    if regression:
        curves = {k: coverage_curve(v.summary, v.summary.y) for k, v in scored.summaries.items()}
        result["coverage"] = {
            "nominal": list(CALIBRATION_LEVELS),
            **{k: [round(float(o), 6) for o in observed] for k, (_, observed) in curves.items()},
        }
    else:
        result["ece_binning"] = ECE_BINNING
    base = _detection_scores(scored.test, regression)
    result["ood"] = {}
    for name, split in dataset.ood.items():
        shifted = scored.ood[name]
        other = _detection_scores(shifted, regression)
        entry = {
            "rows": shifted.rows,
            "scores": {k: _rounded(M.ood_metrics(base[k], other[k]).as_dict()) for k in base},
            "not_accepted_rate": round(not_accepted(shifted), 6),
        }
        if regression and (task := _regression_entry(scored.summaries.get(f"ood:{name}"))) is not None:
            entry["regression"] = {k: task[k] for k in OOD_REGRESSION_KEYS}
        elif (
            not regression
            and isinstance(split, SequenceSplit | TextSplit)
            and _all_classes_known(split, shifted, len(dataset.labels or []))
        ):
            entry["classification"] = _rounded(
                M.classification_metrics(split.y, shifted.predictions.probs, n_bins=ECE_BINS)
            )
        result["ood"][name] = entry
    ood_reports = {name: set_report(gate, scored.test, s) for name, s in scored.ood.items()}
    result["gate"] = {
        "target_fpr": manifest.gate.target_fpr,
        "epistemic_score": manifest.gate.epistemic.score,
        "test": in_distribution_rates(scored.test).model_dump(),
        "val": in_distribution_rates(scored.val).model_dump(),
        "ood": ood_reports,
        "warnings": gate_warnings(ood_reports),
    }
    return result


def _all_classes_known(split: SequenceSplit | TextSplit, scored: GatedSet, classes: int) -> bool:
    """Whether a classifier's OOD set can be scored as a task: every label known, every class present, every
    sequence predicted (as the MLP evaluation requires)."""
    y = np.asarray(split.y)
    predicted = np.isfinite(scored.predictions.probs).all(1)
    return bool((y >= 0).all() and np.unique(y).size == classes and predicted.all())


def _time_axis(ids: np.ndarray) -> np.ndarray | None:
    """Sequence ids as datetimes when every one is an ISO date or time (PM2.5's target hours), else None."""
    try:
        import pandas as pd

        return pd.to_datetime(pd.Series(ids.astype(str)), format="ISO8601").to_numpy()
    except (ValueError, TypeError, ImportError):
        return None


def _figures(
    checkpoint: Checkpoint,
    dataset: SequenceDataset | TabularDataset | TextDataset,
    result: dict[str, Any],
    scored: ScoredSequences,
) -> list[Path]:
    """forecast.png and coverage.png (regression) or reliability.png (classifier), and ood_scores.png."""
    from app.evaluate.plots import write_reliability_diagram, write_score_histogram

    folder, manifest = checkpoint.path, checkpoint.manifest
    written: list[Path] = []
    if dataset.is_regression:
        from app.evaluate.regression_plots import write_coverage_plot, write_forecast_plot

        test = scored.summaries.get("test")
        if test is not None and isinstance(dataset.test, SequenceSplit):
            ids = np.asarray(dataset.test.ids)[test.rows]
            # Sorted by id: for PM2.5 the id is the target hour, so the stretch is consecutive test hours.
            stretch = np.argsort(ids.astype(str), kind="stable")[:FORECAST_ROWS]
            x = _time_axis(ids[stretch])
            title = f"{manifest.name}: {stretch.size} test sequences in id order"
        elif test is not None:  # a table's rows have no order: the first rows, by their predicted mean
            stretch = np.argsort(test.summary.mean[:FORECAST_ROWS], kind="stable")
            x = None
            title = f"{manifest.name}: {stretch.size} test rows, by predicted mean"
        if test is not None:
            write_forecast_plot(
                folder / "forecast.png", test.summary.y, test.summary, stretch, title, manifest.task.unit or "", x=x
            )
            written.append(folder / "forecast.png")
        coverage = result.get("coverage", {})
        curves = {k: (coverage["nominal"], v) for k, v in coverage.items() if k != "nominal"}
        if curves:
            write_coverage_plot(folder / "coverage.png", curves, title=f"{manifest.name}: interval coverage")
            written.append(folder / "coverage.png")
        xlabel = f"epistemic variance ({manifest.task.unit or 'target unit'})²"
    else:
        title = f"{manifest.name}: test split"
        write_reliability_diagram(
            folder / "reliability.png", dataset.test.y, scored.test.predictions.probs, ECE_BINS, title=title
        )
        written.append(folder / "reliability.png")
        xlabel = "mutual information (nats)"
    if scored.ood:
        ood = {name: finite(s.predictions.epistemic) for name, s in scored.ood.items()}
        threshold = manifest.gate.epistemic.threshold
        write_score_histogram(
            folder / "ood_scores.png", finite(scored.test.predictions.epistemic), ood, threshold, xlabel=xlabel
        )
        written.append(folder / "ood_scores.png")
    return written


def write_sequence_evaluation(
    checkpoint: Checkpoint,
    dataset: SequenceDataset | TabularDataset | TextDataset,
    result: dict[str, Any],
    figures: bool = True,
    scored: ScoredSequences | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write metrics.json, card.md (and the figures, from ``scored`` when given, else scored again with the
    result's seed and samples) into the checkpoint folder, and store the metrics in the manifest, as
    :func:`app.evaluate.evaluate.write_evaluation` does. Returns the written paths."""
    from app.evaluate.sequence_card import render_sequence_card

    folder = checkpoint.path
    stamped = {**result, "evaluated": datetime.now(UTC).replace(microsecond=0).isoformat()}
    written = [folder / "metrics.json"]
    written[0].write_text(json.dumps(stamped, indent=2) + "\n")
    drawn: list[Path] = []
    if figures:
        scored = scored or score_sequence_sets(checkpoint, dataset, result["samples"], result["seed"], on_step)
        if on_step is not None:
            on_step("drawing the figures")
        drawn = _figures(checkpoint, dataset, result, scored)
    written += drawn
    card = render_sequence_card(checkpoint.manifest, result, figures=[p.name for p in drawn])
    (folder / "card.md").write_text(card)
    written.append(folder / "card.md")
    write_manifest(folder, checkpoint.manifest.model_copy(update={"metrics": stamped}))
    return written
