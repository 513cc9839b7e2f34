"""The predictive's summaries in numpy, for the torch-free onnx backend (float64 throughout).

Each function mirrors a torch one of ``app.bnn``, formula for formula; tests/checkpoint/test_onnx_export.py
checks that both give the same numbers on the same per-sample probabilities.
"""

from __future__ import annotations

import math

import numpy as np

from app.bnn.spec import BISECTION_STEPS, MC_ERROR_GROUPS, MIN_VARIANCE, MonteCarloError


def _entropy(probs: np.ndarray) -> np.ndarray:
    """H[p] over the last axis with 0·log 0 = 0: (..., C) -> (...) (``app.bnn.predictive.entropy``)."""
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(-1)


def decompose_numpy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample probabilities (S, N, C) -> mean (N, C), total, aleatoric, MI, std (N,) each, in nats.

    Mirrors ``app.bnn.predictive.decompose`` (plus the mean, ``Predictive.mean``): total = H[p̄], aleatoric =
    mean_s H[p_s], MI = total − aleatoric clipped at 0, std = population std over samples of p(predicted class).
    """
    probs = probs.astype(np.float64)
    mean = probs.mean(0)
    total = _entropy(mean)
    aleatoric = _entropy(probs).mean(0)
    mutual_information = np.maximum(total - aleatoric, 0.0)
    chosen = np.take_along_axis(probs, mean.argmax(-1)[None, :, None], axis=-1)[..., 0]  # (S, N)
    return mean, total, aleatoric, mutual_information, chosen.std(0)


def monte_carlo_error_numpy(probs: np.ndarray, groups: int = MC_ERROR_GROUPS) -> MonteCarloError:
    """Largest-over-rows standard errors of p(predicted class) and of the MI, from probs (S, N, C).

    Mirrors ``app.bnn.engine.monte_carlo_error``: the MI's error by a delete-one-group jackknife over
    G = min(``groups``, S) groups (``app.bnn.predictive.mutual_information_error``); (0, 0) below 2 samples.
    """
    probs = probs.astype(np.float64)
    samples, rows, classes = probs.shape
    if samples < 2:
        return MonteCarloError(0.0, 0.0)
    chosen = np.take_along_axis(probs, probs.mean(0).argmax(-1)[None, :, None], axis=-1)[..., 0]  # (S, N)
    se_p = float((chosen.std(0, ddof=1) / math.sqrt(samples)).max())
    g = min(groups, samples)
    size = samples // g
    used = g * size
    group_p = probs[:used].reshape(g, size, rows, classes).sum(1)
    group_h = _entropy(probs[:used]).reshape(g, size, rows).sum(1)
    left_out = used - size
    mi = _entropy((group_p.sum(0) - group_p) / left_out) - (group_h.sum(0) - group_h) / left_out  # (G, N)
    se_mi = np.sqrt((g - 1) / g * np.square(mi - mi.mean(0)).sum(0))
    return MonteCarloError(se_p, float(se_mi.max()))


# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7 over the real line. numpy has no erf and the torch-free install
# no scipy; a mixture quantile found on this CDF differs from the torch one by about 1e-7 of its spread.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    t = 1.0 / (1.0 + _ERF_P * np.abs(x))
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-np.square(x)))


def normal_cdf_numpy(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def gaussian_parameters_numpy(head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """head (S, N, 2): a standardised mean and a raw scale per sample -> means, variances (S, N) float64
    (``app.bnn.regression.gaussian_parameters``: variance = softplus(raw) + MIN_VARIANCE)."""
    head = head.astype(np.float64)
    return head[..., 0], np.logaddexp(0.0, head[..., 1]) + MIN_VARIANCE


def mixture_quantile_numpy(means: np.ndarray, variances: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile (N,) of the equal-weight mixture of N(means_s, variances_s), (S, N) each, by bisection on
    its CDF (``app.bnn.regression.GaussianPredictive.quantile``)."""
    std = np.sqrt(variances)
    low, high = (means - 10 * std).min(0), (means + 10 * std).max(0)
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        below = normal_cdf_numpy((middle - means) / std).mean(0) < q
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return 0.5 * (low + high)
