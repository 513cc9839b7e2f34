"""The comparison's numbers across runs: mean ± std over seeds of each kind, of each ablation rank and of the
risk–coverage curves, from the runs' ``result.json`` and ``scores.npz`` (see :mod:`app.study.runs`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.study.design import StudyPlan
from app.study.gate_section import aggregate_gate
from app.study.measure import risk_coverage
from app.study.runs import load_results
from app.study.tables import mean_std

TEST_METRICS = ("auroc", "auprc", "nll", "ece", "brier", "accuracy")
OOD_METRICS = ("auroc", "aupr_ood", "aupr_in", "fpr_at_95_tpr")
OOD_SCORES = {"mutual_information": "MI", "predictive_std": "std"}
REFERRED = np.round(np.linspace(0.0, 0.9, 91), 2)  # fractions of cases referred in the risk–coverage curves
REFERRAL_TABLE = (0.0, 0.1, 0.3)
# Referral scores of the risk–coverage curves: the key in the report, the figure's panel, the scores' column.
REFERRAL_SCORES = (("mutual_information", "mutual information", "test_mi"), ("total", "total entropy", "test_total"))

# curves[score name][label] = (mean error (F,), std over seeds (F,)) at the fractions REFERRED (F,)
Curves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def aggregate_runs(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of one label's results: test metrics, OOD metrics per set and score, training."""
    first = results[0]
    ood: dict[str, Any] = {}
    for name in first["metrics"]["ood"]:
        entries = [r["metrics"]["ood"][name] for r in results]
        ood[name] = {score: {m: mean_std([e[score][m] for e in entries]) for m in OOD_METRICS} for score in OOD_SCORES}
        ood[name]["not_accepted_rate"] = mean_std([e["not_accepted_rate"] for e in entries])
        ood[name]["rows"] = entries[0]["mutual_information"]["n_ood"]
        ood[name].update(_novelty(entries))
    return {
        "kind": first["kind"],
        "seeds": [r["seed"] for r in results],
        "parameter_count": first["parameter_count"],
        "ranks": first["ranks"],
        "default_samples": first["default_samples"],
        "test": {m: mean_std([r["metrics"]["test"][m] for r in results]) for m in TEST_METRICS},
        "test_rows": first["metrics"]["test"]["n"],
        "ood": ood,
        "training_seconds": mean_std([r["training"]["duration_seconds"] for r in results]),
        "epochs_run": mean_std([r["training"]["epochs_run"] for r in results]),
        "seconds_per_epoch": mean_std(
            [r["training"]["duration_seconds"] / r["training"]["epochs_run"] for r in results]
        ),
        "best_val_nll": mean_std([r["training"]["best_val_nll"] for r in results]),
        "gate": aggregate_gate(results),
    }


def _novelty(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of an OOD set's novelty figures (app.evaluate.novelty): the AUROCs on the rows its
    alteration changed and the risk-matched AUROCs, where every seed has them."""
    found: dict[str, Any] = {}
    if all("changed_rows" in e for e in entries):
        changed = [e["changed_rows"] for e in entries]
        found["changed_rows"] = {
            "rows": changed[0]["rows"],
            **{score: mean_std([c[score]["auroc"] for c in changed]) for score in OOD_SCORES},
        }
    matched = [e.get("risk_matched", {}) for e in entries]
    keys = [k for k in matched[0] if all(k in m for m in matched)] if matched else []
    if "risk" in keys:
        found["risk_matched"] = {k: mean_std([m[k] for m in matched]) for k in keys}
    return found


def mean_ood_auroc(result: Mapping[str, Any]) -> float:
    """A run's OOD AUROC (mutual information) averaged over its OOD sets."""
    return float(np.mean([entry["mutual_information"]["auroc"] for entry in result["metrics"]["ood"].values()]))


def aggregate_ablation(plan: StudyPlan, out: Path) -> list[dict[str, Any]]:
    """One row per ablation rank: :func:`aggregate_runs` over its seeds, its runs' folders and the mean over
    seeds of each run's OOD AUROC averaged over the sets."""
    rows = []
    points = plan.ablation_points(out)
    for rank in plan.ablation_ranks:
        runs = [p.run for p in points if p.rank == rank]
        results = [result for group in load_results(runs).values() for result in group]  # one label per rank
        rows.append(
            {
                "rank": rank,
                "runs": [run.folder.name for run in runs],
                **aggregate_runs(results),
                "ood_auroc_mean_over_sets": mean_std([mean_ood_auroc(r) for r in results]),
            }
        )
    return rows


def aggregate_risk_coverage(
    scores: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
) -> tuple[Curves, dict[str, dict[str, dict[str, Any]]]]:
    """Risk–coverage of each kind from its seeds' scores (``scores[label]``, as :func:`load_scores` reads them):
    the curves for the figure (mean ± std over seeds at each fraction of REFERRED) and the report's entries,
    ``table[label][score][fraction]``, a :func:`mean_std` at each fraction of REFERRAL_TABLE."""
    curves: Curves = {name: {} for _, name, _ in REFERRAL_SCORES}
    entries: dict[str, dict[str, dict[str, Any]]] = {}
    for label, per_seed in scores.items():
        entries[label] = {}
        for key, name, column in REFERRAL_SCORES:
            stacked = np.stack([risk_coverage(s["test_y"], s["test_probs"], s[column], REFERRED) for s in per_seed])
            spread = stacked.std(0, ddof=1) if len(stacked) > 1 else np.zeros(stacked.shape[1])
            curves[name][label] = (stacked.mean(0), spread)
            entries[label][key] = {
                str(f): mean_std(stacked[:, int(np.argmin(np.abs(REFERRED - f)))].tolist()) for f in REFERRAL_TABLE
            }
    return curves, entries
