"""app.evaluate.metrics against scikit-learn (the reference) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from app.evaluate.metrics import (
    OODMetrics,
    ReliabilityBins,
    accuracy,
    auroc,
    average_precision,
    brier,
    classification_metrics,
    expected_calibration_error,
    fpr_at_tpr,
    nll,
    ood_metrics,
    reliability_bins,
)

SEEDS = [0, 1, 2, 7]
SIZES = [5, 40, 501, 3000]


def _binary_case(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels01 (n,) with both classes and scores (n,), heavily tied when ``ties``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    if ties:
        scores = rng.integers(0, 6, n) / 5.0 + 0.3 * y * rng.integers(0, 2, n)
    else:
        scores = rng.normal(size=n) + 0.8 * y
    return y, scores


def _ref_fpr_at_tpr(y: np.ndarray, s: np.ndarray, tpr: float = 0.95) -> float:
    fpr_c, tpr_c, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr_c[np.argmax(tpr_c >= tpr)])


def _binary_probs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) in {0, 1} and probs (n, 2) with tied p1 on a 0.1 grid, no zero probabilities."""
    rng = np.random.default_rng(seed)
    p1 = rng.integers(1, 10, n) / 10.0
    y = (rng.random(n) < p1).astype(np.int64)
    y[:2] = [0, 1]
    return y, np.column_stack([1.0 - p1, p1])


def _multiclass_probs(seed: int, n: int, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) with every class present and probs (n, c) from small integer counts (many ties)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, (n, c)).astype(np.float64)
    probs = counts / counts.sum(axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    return y, probs


# --------------------------------------------------------------------------------------------------
# Ranking metrics vs sklearn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _binary_case(seed, n, ties)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _binary_case(seed, n, ties)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fpr_at_tpr_matches_sklearn_roc_curve(seed: int, n: int, ties: bool, tpr: float) -> None:
    y, s = _binary_case(seed, n, ties)
    got = fpr_at_tpr(y, s, tpr)
    assert got == pytest.approx(_ref_fpr_at_tpr(y, s, tpr), abs=1e-12)
    # sklearn's default curve drops collinear points; it can only land on the same point or a later one.
    fpr_c, tpr_c, _ = roc_curve(y, s)
    assert got <= fpr_c[np.argmax(tpr_c >= tpr)] + 1e-12


def test_fpr_at_tpr_hand_case() -> None:
    # Positives at 0.9, 0.8, 0.4, 0.3; negatives at 0.7, 0.5, 0.2, 0.1.
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert fpr_at_tpr(y, s, 0.5) == 0.0
    assert fpr_at_tpr(y, s, 0.75) == 0.5
    assert fpr_at_tpr(y, s, 0.95) == 0.5
    assert fpr_at_tpr(y, s, 0.0) == 0.0


def test_auroc_all_tied_is_half() -> None:
    assert auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_ranking_metrics_accept_bools_and_lists() -> None:
    y = [False, True, True, False]
    s = [0.1, 0.9, 0.4, 0.5]
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


# --------------------------------------------------------------------------------------------------
# Probabilistic metrics vs sklearn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_probability_metrics_match_sklearn(seed: int, n: int) -> None:
    y, p = _binary_probs(seed, n)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=1e-15)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p[:, 1]), abs=1e-14)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_probability_metrics_match_sklearn(seed: int, n: int) -> None:
    y, p = _multiclass_probs(seed, max(n, 4))
    labels = list(range(p.shape[1]))
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=1e-15)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=labels), rel=1e-12)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p, labels=labels), abs=1e-14)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_binary_matches_sklearn(seed: int, n: int) -> None:
    y, p = _binary_probs(seed, n)
    m = classification_metrics(y, p)
    assert set(m) == {"auroc", "auprc", "accuracy", "nll", "brier", "ece", "n", "positive_rate"}
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p[:, 1]), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert m["nll"] == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p[:, 1]), abs=1e-14)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert m["n"] == n and isinstance(m["n"], int)
    assert m["positive_rate"] == pytest.approx(y.mean())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_multiclass_matches_sklearn(seed: int, n: int) -> None:
    y, p = _multiclass_probs(seed, max(n, 4))
    labels = list(range(p.shape[1]))
    m = classification_metrics(y, p)
    assert "positive_rate" not in m
    assert m["auroc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels), abs=1e-12
    )
    assert m["auprc"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=labels), abs=1e-14)


def test_classification_metrics_reports_nan_ranking_when_a_class_is_absent() -> None:
    p = np.array([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]])
    m = classification_metrics([0, 0, 0], p)
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert m["accuracy"] == 1.0 and m["positive_rate"] == 0.0


def test_nll_clips_zero_probability_to_eps() -> None:
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    expected = (-math.log(1e-12) - math.log(0.5)) / 2
    assert nll([1, 0], p) == pytest.approx(expected)
    assert nll([1, 0], p, eps=1e-6) == pytest.approx((-math.log(1e-6) - math.log(0.5)) / 2)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def test_reliability_bins_and_ece_binary_hand_case() -> None:
    # Bin [0, 0.5): p1 = 0.1, 0.2 (mean 0.15), labels 0, 1 (freq 0.5) -> gap 0.35, weight 1/2.
    # Bin [0.5, 1]: p1 = 0.5, 1.0 (mean 0.75), labels 1, 1 (freq 1.0) -> gap 0.25, weight 1/2.
    p1 = np.array([0.1, 0.2, 0.5, 1.0])
    probs = np.column_stack([1 - p1, p1])
    labels = np.array([0, 1, 1, 1])
    bins = reliability_bins(labels, probs, n_bins=2)
    assert isinstance(bins, ReliabilityBins)
    np.testing.assert_allclose(bins.edges, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(bins.count, [2, 2])
    np.testing.assert_allclose(bins.confidence, [0.15, 0.75])
    np.testing.assert_allclose(bins.frequency, [0.5, 1.0])
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.25)


def test_reliability_bins_multiclass_uses_top_label() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # top 0, conf 0.7, correct
            [0.1, 0.8, 0.1],  # top 1, conf 0.8, wrong
            [0.4, 0.3, 0.3],  # top 0, conf 0.4, wrong
            [0.2, 0.2, 0.6],  # top 2, conf 0.6, correct
        ]
    )
    labels = np.array([0, 2, 1, 2])
    bins = reliability_bins(labels, probs, n_bins=5)
    # Edges 0, .2, .4, .6, .8, 1: conf 0.4 -> bin 2, 0.6 and 0.7 -> bin 3, 0.8 -> bin 4.
    np.testing.assert_array_equal(bins.count, [0, 0, 1, 2, 1])
    np.testing.assert_allclose(bins.confidence[2:], [0.4, 0.65, 0.8])
    np.testing.assert_allclose(bins.frequency[2:], [0.0, 1.0, 0.0])
    assert np.isnan(bins.confidence[:2]).all() and np.isnan(bins.frequency[:2]).all()
    expected = 0.25 * 0.4 + 0.5 * 0.35 + 0.25 * 0.8
    assert expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(expected)


def test_reliability_bins_shapes_and_empty_bins() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1]])
    bins = reliability_bins([0, 0], probs, n_bins=10)
    assert bins.edges.shape == (11,) and bins.count.shape == (10,)
    assert bins.confidence.shape == bins.frequency.shape == (10,)
    assert bins.count.sum() == 2 and bins.count[0] == 1 and bins.count[1] == 1
    assert np.isnan(bins.confidence[2:]).all()
    assert bins.n_bins == 10


@pytest.mark.parametrize("n_bins", [5, 10, 20])
def test_probabilities_on_edges_fall_in_the_bin_above(n_bins: int) -> None:
    # Vote fractions k/10 hit the edges exactly; each must land in the bin that starts at it.
    p1 = np.arange(11) / 10.0
    probs = np.column_stack([1 - p1, p1])
    bins = reliability_bins(np.zeros(11, dtype=int), probs, n_bins=n_bins)
    expected = np.bincount(np.minimum((np.arange(11) * n_bins) // 10, n_bins - 1), minlength=n_bins)
    np.testing.assert_array_equal(bins.count, expected)
    for v in (0.3, 0.6, 0.7):  # typed decimals, not k/10
        b = reliability_bins([0], [[1 - v, v]], n_bins=n_bins)
        assert b.count[int(round(v * 100)) * n_bins // 100] == 1


def test_perfectly_calibrated_binary_has_near_zero_ece() -> None:
    rng = np.random.default_rng(123)
    p1 = rng.random(200_000)
    y = (rng.random(p1.size) < p1).astype(np.int64)
    assert expected_calibration_error(y, np.column_stack([1 - p1, p1])) < 0.01


def test_perfectly_calibrated_multiclass_has_near_zero_ece() -> None:
    rng = np.random.default_rng(321)
    probs = rng.dirichlet([0.5, 0.5, 0.5, 0.5], size=200_000)
    y = (rng.random((probs.shape[0], 1)) > probs.cumsum(axis=1)).sum(axis=1)
    y = np.minimum(y, 3)
    assert expected_calibration_error(y, probs) < 0.01


def test_overconfident_model_has_large_ece() -> None:
    # Always says 0.99 for the positive class, right half the time.
    y = np.array([0, 1] * 50)
    probs = np.tile([0.01, 0.99], (100, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.49)


# --------------------------------------------------------------------------------------------------
# OOD metrics
# --------------------------------------------------------------------------------------------------


def test_ood_metrics_perfect_separation() -> None:
    m = ood_metrics(np.linspace(0, 1, 50), np.linspace(2, 3, 30))
    assert isinstance(m, OODMetrics)
    assert m.auroc == 1.0 and m.fpr_at_95_tpr == 0.0
    # sklearn sums ΔR·P over thresholds with R = tps / n_pos: a perfect ranking can land an ulp under 1.
    assert m.aupr_ood == pytest.approx(1.0, abs=1e-15) and m.aupr_in == pytest.approx(1.0, abs=1e-15)
    assert (m.n_in, m.n_ood) == (50, 30)


def test_ood_metrics_reversed() -> None:
    m = ood_metrics(np.linspace(2, 3, 50), np.linspace(0, 1, 30))
    assert m.auroc == 0.0
    assert m.fpr_at_95_tpr == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_ood_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s_in = np.round(rng.gamma(2.0, 0.05, 700), 2)  # rounding gives ties, like quantised MI
    s_ood = np.round(rng.gamma(3.0, 0.08, 250), 2)
    y = np.r_[np.zeros(s_in.size), np.ones(s_ood.size)]
    s = np.r_[s_in, s_ood]
    m = ood_metrics(s_in, s_ood)
    assert m.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.aupr_ood == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m.aupr_in == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m.fpr_at_95_tpr == pytest.approx(_ref_fpr_at_tpr(y, s, 0.95), abs=1e-12)
    d = m.as_dict()
    assert set(d) == {"auroc", "aupr_ood", "aupr_in", "fpr_at_95_tpr", "n_in", "n_ood"}
    assert d["n_in"] == 700 and d["n_ood"] == 250


def test_ood_metrics_is_frozen() -> None:
    m = ood_metrics([0.1, 0.2], [0.3, 0.4])
    with pytest.raises(AttributeError):
        m.auroc = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [auroc, average_precision, fpr_at_tpr])
def test_ranking_validation(fn) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="infinite"):
        fn([0, 1], [0.1, np.inf])
    with pytest.raises(ValueError, match="0/1"):
        fn([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0, 1]], [[0.1, 0.2]])


def test_single_class_errors() -> None:
    with pytest.raises(ValueError, match="one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        fpr_at_tpr([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="no positive"):
        average_precision([0, 0], [0.1, 0.2])
    # All positives: AP is defined (1.0), as in sklearn.
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0


def test_fpr_at_tpr_rejects_bad_tpr() -> None:
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([0, 1], [0.1, 0.2], tpr=1.5)


@pytest.mark.parametrize(
    "fn",
    [accuracy, nll, brier, reliability_bins, expected_calibration_error, classification_metrics],
)
def test_probability_validation(fn) -> None:
    good = np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match="length mismatch"):
        fn([0, 1, 1], good)
    with pytest.raises(ValueError, match="empty"):
        fn([], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], np.array([[0.3, 0.7], [np.nan, 0.4]]))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([0.0, np.nan]), good)
    with pytest.raises(ValueError, match=r"2-D \(N, C\)"):
        fn([0, 1], np.array([0.7, 0.4]))
    with pytest.raises(ValueError, match="sum to 1"):
        fn([0, 1], np.array([[0.9, 0.7], [0.6, 0.4]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0, 1], np.array([[1.5, -0.5], [0.6, 0.4]]))
    with pytest.raises(ValueError, match="class ids"):
        fn([0, 2], good)
    with pytest.raises(ValueError, match="class ids"):
        fn([0.0, 0.5], good)


def test_n_bins_and_eps_validation() -> None:
    probs = np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0, 1], probs, n_bins=0)
    with pytest.raises(ValueError, match="eps"):
        nll([0, 1], probs, eps=0.0)


def test_ood_metrics_validation() -> None:
    with pytest.raises(ValueError, match="id_scores is empty"):
        ood_metrics([], [0.1])
    with pytest.raises(ValueError, match="ood_scores contains NaN"):
        ood_metrics([0.1], [np.nan])


def test_float32_softmax_rows_are_accepted() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1000, 3)).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    y = rng.integers(0, 3, 1000)
    assert 0.0 <= classification_metrics(y, probs)["ece"] <= 1.0
