"""The predictive's summaries in numpy, for the torch-free onnx backend (float64 throughout).

Each function mirrors a torch one of ``app.bnn``, formula for formula; tests/checkpoint/test_onnx_export.py
checks that both give the same numbers on the same per-sample probabilities.
"""

from __future__ import annotations

import math

import numpy as np

from app.bnn.spec import MonteCarloError

MC_ERROR_GROUPS = 8  # batch means for the MI's Monte Carlo error, as app.bnn.engine.monte_carlo_error


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

    Mirrors ``app.bnn.engine.monte_carlo_error``: the MI's error by batch means over ``groups`` groups, NaN
    when a group would hold fewer than 2 samples; (0, 0) below 2 samples.
    """
    probs = probs.astype(np.float64)
    samples, rows, classes = probs.shape
    if samples < 2:
        return MonteCarloError(0.0, 0.0)
    chosen = np.take_along_axis(probs, probs.mean(0).argmax(-1)[None, :, None], axis=-1)[..., 0]  # (S, N)
    se_p = float((chosen.std(0, ddof=1) / math.sqrt(samples)).max())
    size = samples // groups
    if size < 2:
        return MonteCarloError(se_p, float("nan"))
    grouped = probs[: groups * size].reshape(groups, size, rows, classes)
    mi = np.maximum(_entropy(grouped.mean(1)) - _entropy(grouped).mean(1), 0.0)  # (groups, N)
    return MonteCarloError(se_p, float((mi.std(0, ddof=1) / math.sqrt(groups)).max()))
