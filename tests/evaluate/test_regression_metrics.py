"""app.evaluate.regression: hand-computed metrics, chunking invariance, calibration, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.bnn.regression import GaussianPredictive
from app.evaluate.regression import (
    CALIBRATION_LEVELS,
    DEFAULT_LEVELS,
    INTERVAL_LEVELS,
    coverage_curve,
    ood_scores,
    regression_metrics,
    summarise,
)


def _predictive(samples: int, rows: int, seed: int = 0) -> GaussianPredictive:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, rows, 1, generator=gen, dtype=torch.float64)
    means = centre + 0.5 * torch.randn(samples, rows, 1, generator=gen, dtype=torch.float64)
    variances = 0.1 + torch.rand(samples, rows, 1, generator=gen, dtype=torch.float64)
    return GaussianPredictive(means, variances)


def _draw(predictive: GaussianPredictive, seed: int, std_scale: float = 1.0) -> np.ndarray:
    """One y per row from the mixture (a random component, then its Gaussian), its deviation from the
    mixture mean scaled by std_scale (2: a predictive twice as wide as the one summarised)."""
    rng = np.random.default_rng(seed)
    means = predictive.means[..., 0].numpy()
    std = predictive.variances[..., 0].sqrt().numpy()
    pick = rng.integers(0, means.shape[0], means.shape[1])
    cols = np.arange(means.shape[1])
    draw = means[pick, cols] + std[pick, cols] * rng.standard_normal(means.shape[1])
    centre = means.mean(0)
    return centre + std_scale * (draw - centre)


def test_constants() -> None:
    assert len(CALIBRATION_LEVELS) == 19
    assert CALIBRATION_LEVELS[0] == 0.05 and CALIBRATION_LEVELS[-1] == 0.95
    assert set(INTERVAL_LEVELS) <= set(DEFAULT_LEVELS)


def test_metrics_match_hand_computation() -> None:
    predictive = _predictive(7, 50)
    y = _draw(predictive, seed=1)
    summary = summarise(predictive, y)
    metrics = regression_metrics(summary, y)
    means = predictive.means[..., 0].numpy()
    variances = predictive.variances[..., 0].numpy()
    mix_mean = means.mean(0)
    assert metrics["rmse"] == pytest.approx(math.sqrt(np.mean((y - mix_mean) ** 2)), rel=1e-12)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(y - mix_mean)), rel=1e-12)
    log_each = -0.5 * (np.log(2 * np.pi * variances) + (y - means) ** 2 / variances)
    top = log_each.max(0)
    log_p = top + np.log(np.exp(log_each - top).mean(0))
    assert metrics["nll"] == pytest.approx(-np.mean(log_p), rel=1e-12)
    assert metrics["mean_aleatoric_variance"] == pytest.approx(variances.mean(), rel=1e-12)
    assert metrics["mean_epistemic_variance"] == pytest.approx(means.var(0).mean(), rel=1e-12)
    np.testing.assert_allclose(summary.total, variances.mean(0) + means.var(0), rtol=1e-12)
    np.testing.assert_allclose(summary.total_std, np.sqrt(summary.total))
    assert metrics["rows"] == 50
    for level in INTERVAL_LEVELS:
        width = summary.upper[level] - summary.lower[level]
        assert metrics[f"mpiw_{round(level * 100)}"] == pytest.approx(width.mean())
    scores = ood_scores(summary)
    np.testing.assert_array_equal(scores["epistemic_variance"], summary.epistemic)


def test_quantiles_match_bisection_including_bimodal() -> None:
    predictive = _predictive(20, 30)
    means = predictive.means.clone()
    means[:10, :10] -= 8.0  # well-separated modes, a near-flat CDF between them
    predictive = GaussianPredictive(means, predictive.variances)
    summary = summarise(predictive, chunk_rows=7)
    for level in DEFAULT_LEVELS:
        lower, upper = predictive.interval(level)
        np.testing.assert_allclose(summary.lower[level], lower[:, 0].numpy(), atol=1e-9)
        np.testing.assert_allclose(summary.upper[level], upper[:, 0].numpy(), atol=1e-9)


def test_crps_chunked_equals_unchunked() -> None:
    predictive = _predictive(12, 40, seed=3)
    y = _draw(predictive, seed=4)
    expected = predictive.crps(torch.as_tensor(y[:, None]))[:, 0].numpy()
    for chunk in (1, 7, 40, 1000):
        summary = summarise(predictive, y, chunk_rows=chunk)
        np.testing.assert_allclose(summary.crps, expected, atol=1e-6, rtol=0)
    float32 = GaussianPredictive(predictive.means.float(), predictive.variances.float())
    np.testing.assert_allclose(summarise(float32, y).crps, expected, atol=1e-5)


def test_picp_on_constructed_case() -> None:
    # One sample N(0, 1) per row: the 90% interval is ±1.6449; y on, inside and outside its bounds.
    rows = 8
    ones = torch.ones(1, rows, 1, dtype=torch.float64)
    predictive = GaussianPredictive(0 * ones, ones)
    z90 = 1.6448536269514722
    summary = summarise(predictive)
    np.testing.assert_allclose(summary.upper[0.9], z90, atol=1e-9)
    np.testing.assert_allclose(summary.lower[0.9], -z90, atol=1e-9)
    # Exactly on either bound counts as inside: inside are the two bounds, 0.5, -1.0 and 1.6.
    y = np.array([summary.upper[0.9][0], summary.lower[0.9][1], 0.5, -1.0, 1.6, 2.0, -3.0, -1.7])
    metrics = regression_metrics(summarise(predictive, y), y)
    assert metrics["picp_90"] == pytest.approx(5 / 8)
    assert metrics["picp_50"] == pytest.approx(1 / 8)  # ±0.6745: only 0.5
    assert metrics["mpiw_90"] == pytest.approx(2 * z90, abs=1e-9)


def test_coverage_near_nominal_when_y_from_predictive() -> None:
    predictive = _predictive(10, 20_000, seed=5)
    y = _draw(predictive, seed=6)
    summary = summarise(predictive, y)
    nominal, observed = coverage_curve(summary, y)
    np.testing.assert_array_equal(nominal, CALIBRATION_LEVELS)
    assert np.max(np.abs(observed - nominal)) < 0.02
    assert regression_metrics(summary, y)["calibration_error"] < 0.01
    y_wide = _draw(predictive, seed=7, std_scale=2.0)
    too_wide = summarise(predictive, y_wide)
    assert regression_metrics(too_wide, y_wide)["calibration_error"] > 0.2


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros(9), "length mismatch"),
        (np.zeros((10, 1)), "1-D"),
        (np.array([np.nan] + [0.0] * 9), "NaN"),
        (np.array([np.inf] + [0.0] * 9), "infinite"),
        (np.array(["a"] * 10), "numeric"),
    ],
)
def test_bad_y_raises(y: np.ndarray, message: str) -> None:
    predictive = _predictive(3, 10)
    with pytest.raises(ValueError, match=message):
        summarise(predictive, y)
    summary = summarise(predictive)
    with pytest.raises(ValueError, match=message):
        coverage_curve(summary, y)


def test_bad_predictive_and_arguments_raise() -> None:
    two_targets = GaussianPredictive(torch.zeros(3, 5, 2), torch.ones(3, 5, 2))
    with pytest.raises(ValueError, match="one target"):
        summarise(two_targets)
    with pytest.raises(ValueError, match="positive"):
        summarise(GaussianPredictive(torch.zeros(3, 5, 1), torch.zeros(3, 5, 1)))
    with pytest.raises(ValueError, match="NaN"):
        summarise(GaussianPredictive(torch.full((3, 5, 1), math.nan), torch.ones(3, 5, 1)))
    predictive = _predictive(3, 10)
    with pytest.raises(ValueError, match="levels"):
        summarise(predictive, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="chunk_rows"):
        summarise(predictive, chunk_rows=0)
    y = np.zeros(10)
    with pytest.raises(ValueError, match="without y"):
        regression_metrics(summarise(predictive), y)
    with pytest.raises(ValueError, match="lacks interval levels"):
        regression_metrics(summarise(predictive, y, levels=INTERVAL_LEVELS), y)
    with pytest.raises(ValueError, match="differs"):
        regression_metrics(summarise(predictive, y), y + 1)
