"""Classification, calibration and out-of-distribution (OOD) metrics on numpy arrays.

Conventions used throughout:

* ``labels``: int class ids, shape (N,), values in ``[0, C)``.
* ``labels01``: binary labels, shape (N,), values in ``{0, 1}`` (bools accepted); 1 is the positive class.
* ``probs``: predictive class probabilities, shape (N, C), rows sum to 1. A binary task uses C = 2 and
  the positive class is column 1.
* ``scores``: shape (N,), larger means more likely positive (or more likely OOD).

The ranking metrics (AUROC, average precision, the ROC curve) and the Brier score are scikit-learn's
(the ``train`` extra; serving never imports this module), behind this module's input checks; the
calibration metrics (reliability bins, ECE) and the OOD summary, which scikit-learn lacks, are here.
Invalid input raises ``ValueError`` with a message naming the problem.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

__all__ = [
    "OODMetrics",
    "ReliabilityBins",
    "accuracy",
    "auroc",
    "average_precision",
    "brier",
    "classification_metrics",
    "expected_calibration_error",
    "fpr_at_tpr",
    "nll",
    "ood_metrics",
    "reliability_bins",
]

# Row sums of probabilities may be off by float32 rounding (softmax on a GPU); anything further off is
# more likely logits or a wrong column than rounding.
_ROW_SUM_ATOL = 1e-3
# Probabilities slightly outside [0, 1] from rounding are tolerated (and clipped where it matters).
_PROB_ATOL = 1e-6


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _as_scores(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 vector of shape (N,), N >= 1."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _as_int_labels(x: object, name: str) -> np.ndarray:
    """Return ``x`` as an int64 vector of shape (N,), N >= 1; integral floats and bools are accepted."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class ids")
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")


def _as_labels01(x: object, name: str = "labels01") -> np.ndarray:
    """Return binary labels as an int64 vector (N,) with values in {0, 1}."""
    arr = _as_int_labels(x, name)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must be 0/1, found {np.unique(arr[bad])[:5].tolist()}")
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"length mismatch: {name_a} has {a.shape[0]} rows, {name_b} has {b.shape[0]}")


def _binary_inputs(labels01: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels01 (N,), scores (N,)) pair."""
    y = _as_labels01(labels01)
    s = _as_scores(scores, "scores")
    _check_same_length(y, s, "labels01", "scores")
    return y, s


def _classification_inputs(labels: object, probs: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (N,) and probs (N, C): C >= 2, finite, in [0, 1], rows summing to 1."""
    y = _as_int_labels(labels, "labels")
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"probs must be numeric: {exc}") from exc
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(
            f"probs must be 2-D (N, C) with C >= 2, got shape {p.shape}; "
            "for a binary task pass np.column_stack([1 - p, p])"
        )
    if p.shape[0] == 0:
        raise ValueError("probs is empty")
    _check_same_length(y, p, "labels", "probs")
    if np.isnan(p).any():
        raise ValueError("probs contains NaN")
    if np.isinf(p).any():
        raise ValueError("probs contains infinite values")
    if p.min() < -_PROB_ATOL or p.max() > 1 + _PROB_ATOL:
        raise ValueError(f"probs must lie in [0, 1], found range [{p.min():.6g}, {p.max():.6g}]")
    row_err = np.abs(p.sum(axis=1) - 1.0)
    if row_err.max() > _ROW_SUM_ATOL:
        raise ValueError(f"probs rows must sum to 1 (worst row is off by {row_err.max():.3g}); were logits passed?")
    c = p.shape[1]
    out_of_range = (y < 0) | (y >= c)
    if out_of_range.any():
        raise ValueError(
            f"labels must be class ids in [0, {c}) to match probs' {c} columns, "
            f"found {np.unique(y[out_of_range])[:5].tolist()}"
        )
    return y, np.clip(p, 0.0, 1.0)


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------------------------------
# Ranking metrics (scikit-learn's, behind this module's validation and messages)
# --------------------------------------------------------------------------------------------------


def auroc(labels01: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve for labels01 (N,) and scores (N,): ``sklearn.metrics.roc_auc_score`` (a tie
    between a positive and a negative counts one half).

    Raises:
        ValueError: on invalid input or when only one class is present (the AUROC is undefined).
    """
    y, s = _binary_inputs(labels01, scores)
    if not 0 < int(y.sum()) < y.size:
        raise ValueError("only one class present in labels01; AUROC is undefined")
    return float(roc_auc_score(y, s))


def average_precision(labels01: np.ndarray, scores: np.ndarray) -> float:
    """Average precision for labels01 (N,) and scores (N,): ``sklearn.metrics.average_precision_score``.

    AP = Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds in decreasing order (tied scores are one
    threshold), with R_0 = 0: the step-wise area under the precision–recall curve, no interpolation.

    Raises:
        ValueError: on invalid input or when there is no positive (recall is undefined).
    """
    y, s = _binary_inputs(labels01, scores)
    if not y.any():
        raise ValueError("no positive in labels01; average precision is undefined")
    return float(average_precision_score(y, s))


def fpr_at_tpr(labels01: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the first ROC point whose true-positive rate is >= ``tpr``.

    labels01 (N,), scores (N,). The ROC curve is ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``:
    one point per distinct score (ties grouped), preceded by (0, 0). Walking thresholds from the highest
    down, the first point reaching ``tpr`` is the strictest threshold that still catches that fraction of
    positives, so its FPR is the lowest achievable: the "FPR at 95% TPR" of the OOD literature when
    positives are OOD.

    Raises:
        ValueError: on invalid input, ``tpr`` outside [0, 1], or when only one class is present.
    """
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must lie in [0, 1], got {tpr}")
    y, s = _binary_inputs(labels01, scores)
    if not 0 < int(y.sum()) < y.size:
        raise ValueError("only one class present in labels01; FPR at TPR is undefined")
    fpr_curve, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    # tpr_curve ends at exactly 1.0, so a point is always found for tpr <= 1.
    return float(fpr_curve[np.argmax(tpr_curve >= tpr)])


# --------------------------------------------------------------------------------------------------
# Probabilistic classification metrics
# --------------------------------------------------------------------------------------------------


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of rows whose arg-max class (first one on ties) equals the label; labels (N,), probs (N, C)."""
    y, p = _classification_inputs(labels, probs)
    return float(np.mean(np.argmax(p, axis=1) == y))


def nll(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood in nats of labels (N,) under probs (N, C), clipped to [eps, 1].

    Clipping keeps a single confident mistake from making the mean infinite.
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    y, p = _classification_inputs(labels, probs)
    p_true = np.clip(p[np.arange(y.size), y], eps, 1.0)
    return float(-np.mean(np.log(p_true)))


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier score of labels (N,) under probs (N, C): ``sklearn.metrics.brier_score_loss``.

    Binary (C = 2): mean (p1 − y)². C > 2: mean over rows of Σ_c (p_c − onehot_c)² (range [0, 2]). The
    binary form is half the multi-class form on two columns; it is kept because it is the one clinical
    readers know (and sklearn's default for two classes).
    """
    y, p = _classification_inputs(labels, probs)
    if p.shape[1] == 2:
        return float(brier_score_loss(y, p[:, 1], pos_label=1))
    with warnings.catch_warnings():
        # Rows were checked to sum to 1 within _ROW_SUM_ATOL (float32 softmax rounding); sklearn's stricter
        # check would warn about those very rows.
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one", category=UserWarning)
        return float(brier_score_loss(y, p, labels=np.arange(p.shape[1])))


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin calibration statistics (the data behind a reliability diagram).

    Attributes:
        edges: (n_bins + 1,) equal-width bin edges on [0, 1]; bin b is [edges[b], edges[b+1]), the last
            bin closed on the right.
        confidence: (n_bins,) mean binned probability per bin (NaN where empty).
        frequency: (n_bins,) observed frequency per bin (NaN where empty): the positive rate for a binary
            task, the accuracy for C > 2.
        count: (n_bins,) int number of samples per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.count.size)


def _binned_values(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (probability, outcome) pairs that are binned, each (N,).

    Binary: (p1, y) — calibration of the predicted risk itself, what a clinical user reads.
    C > 2: (top-label confidence, top-label correct).
    """
    if p.shape[1] == 2:
        return p[:, 1], y.astype(np.float64)
    top = np.argmax(p, axis=1)
    return p[np.arange(y.size), top], (top == y).astype(np.float64)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> ReliabilityBins:
    """Bin predictions into ``n_bins`` equal-width bins on [0, 1]; labels (N,), probs (N, C).

    Binary tasks (C = 2) bin the predicted probability of the positive class (column 1) and compare it
    with the observed positive frequency: the calibration of the risk itself, which is what a clinical
    user reads. For C > 2 the top-label confidence is binned and compared with the top-label accuracy.
    Bin b holds values in [edges[b], edges[b+1]); the last bin is closed on the right so that 1.0 counts.
    Empty bins have count 0 and NaN confidence and frequency.
    """
    n_bins = _check_n_bins(n_bins)
    y, p = _classification_inputs(labels, probs)
    value, outcome = _binned_values(y, p)
    # k / n_bins, each correctly rounded: a probability equal to an edge (0.3, or a vote fraction 3/10)
    # is then the same double as the edge and lands in the bin above it. np.linspace computes k * step,
    # which misses by an ulp (3 * 0.1 != 0.3) and would drop such values into the bin below.
    edges = np.arange(n_bins + 1) / n_bins
    # searchsorted against the very edges reported keeps membership consistent with them.
    idx = np.clip(np.searchsorted(edges, value, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_value = np.bincount(idx, weights=value, minlength=n_bins)
    sum_outcome = np.bincount(idx, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, sum_value / count, np.nan)
        frequency = np.where(count > 0, sum_outcome / count, np.nan)
    for arr in (edges, confidence, frequency, count):
        arr.setflags(write=False)
    return ReliabilityBins(edges=edges, confidence=confidence, frequency=frequency, count=count)


def ece_from_bins(bins: ReliabilityBins) -> float:
    """The expected calibration error of reliability bins: the count-weighted mean |frequency - confidence|."""
    nonempty = bins.count > 0
    weights = bins.count[nonempty] / bins.count.sum()
    gaps = np.abs(bins.frequency[nonempty] - bins.confidence[nonempty])
    return float(np.sum(weights * gaps))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE = Σ_b (count_b / N) |frequency_b − confidence_b| over non-empty bins; labels (N,), probs (N, C).

    Uses :func:`reliability_bins`, so a binary task measures the calibration of the positive-class
    probability and C > 2 the top-label calibration.
    """
    return ece_from_bins(reliability_bins(labels, probs, n_bins))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """Summary metrics of probs (N, C) against labels (N,).

    Keys: ``auroc`` (binary: on p1; C > 2: macro one-vs-rest), ``auprc`` (average precision, same
    convention), ``accuracy``, ``nll``, ``brier``, ``ece`` (see :func:`reliability_bins`), ``n`` (int) and,
    for binary tasks only, ``positive_rate``. ``auroc``/``auprc`` are NaN when a class is absent from
    ``labels`` (undefined), so that the other metrics of a small split are still reported.
    """
    y, p = _classification_inputs(labels, probs)
    n_classes = p.shape[1]
    if n_classes == 2:
        both = 0 < int(y.sum()) < y.size
        roc = auroc(y, p[:, 1]) if both else float("nan")
        ap = average_precision(y, p[:, 1]) if both else float("nan")
    else:
        present = np.bincount(y, minlength=n_classes) > 0
        if present.all():
            roc = float(np.mean([auroc(y == c, p[:, c]) for c in range(n_classes)]))
            ap = float(np.mean([average_precision(y == c, p[:, c]) for c in range(n_classes)]))
        else:
            roc = ap = float("nan")
    out: dict[str, float] = {
        "auroc": roc,
        "auprc": ap,
        "accuracy": accuracy(y, p),
        "nll": nll(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "n": int(y.size),
    }
    if n_classes == 2:
        out["positive_rate"] = float(np.mean(y == 1))
    return out


# --------------------------------------------------------------------------------------------------
# Out-of-distribution detection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OODMetrics:
    """How well an uncertainty score separates in-distribution (ID) from OOD inputs.

    Attributes:
        auroc: AUROC with OOD as the positive class (1 = perfect, 0.5 = chance).
        aupr_ood: average precision with OOD positive.
        aupr_in: average precision with ID positive and the score negated.
        fpr_at_95_tpr: fraction of ID inputs flagged at the threshold that catches 95% of OOD inputs.
        n_in: number of ID scores.
        n_ood: number of OOD scores.
    """

    auroc: float
    aupr_ood: float
    aupr_in: float
    fpr_at_95_tpr: float
    n_in: int
    n_ood: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (JSON-friendly)."""
        return asdict(self)


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> OODMetrics:
    """OOD detection metrics from id_scores (N_in,) and ood_scores (N_ood,); larger score = more OOD.

    The two sets are pooled with ID labelled 0 and OOD labelled 1.
    """
    s_in = _as_scores(id_scores, "id_scores")
    s_ood = _as_scores(ood_scores, "ood_scores")
    scores = np.concatenate([s_in, s_ood])
    y = np.concatenate([np.zeros(s_in.size, dtype=np.int64), np.ones(s_ood.size, dtype=np.int64)])
    return OODMetrics(
        auroc=auroc(y, scores),
        aupr_ood=average_precision(y, scores),
        aupr_in=average_precision(1 - y, -scores),
        fpr_at_95_tpr=fpr_at_tpr(y, scores, 0.95),
        n_in=int(s_in.size),
        n_ood=int(s_ood.size),
    )
