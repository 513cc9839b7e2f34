"""OOD figures that measure novelty rather than something else a score also ranks.

Two confounds an OOD set can carry (issue 20):

- **Unchanged rows.** A set made by altering test rows can leave some unaltered (a unit error on a value that
  is missing): those rows are test rows, and every score ranks them at chance. The set's figures on the rows
  the alteration changed (``Split.changed``) are reported beside the whole set's.
- **Risk.** A set can differ from the test split in the outcome's risk as well as in novelty (the elderly die
  more): entropy or predictive std then flag high-risk rows, sick patients, not unfamiliar ones. The
  risk-matched AUROC reweights the in-distribution rows so that their predicted risk has the OOD set's
  distribution (over the OOD set's risk deciles); a score's AUROC then is what it adds beyond risk, and the
  predicted risk's own AUROC after matching, near 0.5, checks the matching. OOD rows in a decile that no
  in-distribution row reaches cannot be matched: they are left out, and the share kept is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

RISK_BINS = 10


def risk_weights(id_risk: np.ndarray, ood_risk: np.ndarray, bins: int = RISK_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(weights of the in-distribution rows (N_id,), mask of the OOD rows kept (N_ood,)): the weights give the
    in-distribution rows, in total, the kept OOD rows' distribution over the OOD set's risk deciles."""
    edges = np.quantile(ood_risk, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    id_bin = np.searchsorted(edges, id_risk, side="right")
    ood_bin = np.searchsorted(edges, ood_risk, side="right")
    id_count = np.bincount(id_bin, minlength=bins)
    kept = id_count[ood_bin] > 0
    share = np.bincount(ood_bin[kept], minlength=bins) / max(1, int(kept.sum()))
    weights = np.where(id_count[id_bin] > 0, share[id_bin] / np.maximum(id_count[id_bin], 1), 0.0)
    return weights, kept


def weighted_auroc(id_scores: np.ndarray, ood_scores: np.ndarray, id_weights: np.ndarray) -> float:
    """AUROC of OOD (positive) against in-distribution rows, the latter weighted (each class's weights sum
    to 1)."""
    labels = np.r_[np.zeros(id_scores.size), np.ones(ood_scores.size)]
    weights = np.r_[id_weights / id_weights.sum(), np.full(ood_scores.size, 1.0 / ood_scores.size)]
    return float(roc_auc_score(labels, np.r_[id_scores, ood_scores], sample_weight=weights))


def risk_matched(
    id_risk: np.ndarray, ood_risk: np.ndarray, id_scores: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per score, its risk-matched AUROC; with the predicted risk's AUROC before and after matching and the
    share of OOD rows matched. Scores larger = more unfamiliar; non-finite rows are left out of every figure."""
    finite_id = np.isfinite(id_risk) & np.all([np.isfinite(v) for v in id_scores.values()], axis=0)
    finite_ood = np.isfinite(ood_risk) & np.all([np.isfinite(v) for v in ood_scores.values()], axis=0)
    id_risk, ood_risk = id_risk[finite_id], ood_risk[finite_ood]
    weights, kept = risk_weights(id_risk, ood_risk)
    if not kept.any():
        return {"matched_ood_share": 0.0}
    unweighted = np.ones(id_risk.size)
    found: dict[str, Any] = {
        "matched_ood_share": round(float(kept.mean()), 6),
        "risk": round(weighted_auroc(id_risk, ood_risk, unweighted), 6),
        "risk_after_matching": round(weighted_auroc(id_risk, ood_risk[kept], weights), 6),
    }
    for name, scores in id_scores.items():
        shifted = ood_scores[name][finite_ood]
        found[name] = round(weighted_auroc(scores[finite_id], shifted[kept], weights), 6)
    return found
