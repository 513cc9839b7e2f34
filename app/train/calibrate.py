"""Calibrating the OOD gate on in-distribution validation scores."""

from __future__ import annotations

import numpy as np

from app.checkpoint.manifest import OODGate

REFERENCE_LEVELS = np.linspace(0.0, 1.0, 101)


def calibrate_gate(scores: np.ndarray, target_fpr: float, samples: int, seed: int, split: str = "val") -> OODGate:
    """Threshold = the (1 − target_fpr) quantile of in-distribution scores, so about ``target_fpr`` of
    in-distribution rows score above it; the 101 percentiles are kept as the drift reference.

    scores: (N,) OOD scores (mutual information, nats) of the calibration split.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("calibration scores must be a non-empty 1-D array of finite values")
    threshold = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
    return OODGate(
        threshold=threshold,
        target_fpr=target_fpr,
        achieved_fpr=float((scores > threshold).mean()),
        reference_quantiles=[float(q) for q in np.quantile(scores, REFERENCE_LEVELS)],
        calibration_split=split,
        calibration_rows=int(scores.size),
        calibration_samples=samples,
        calibration_seed=seed,
    )
