"""Drift of the OOD score over a sliding window of recent predictions, against the checkpoint's reference.

Population stability index over the reference's deciles, the Kolmogorov–Smirnov statistic against the
reference's piecewise-linear CDF (from its 101 percentiles), and the windowed OOD rate.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

PSI_EPSILON = 1e-4  # keeps empty bins finite; the usual choice in PSI reports


@dataclass(frozen=True)
class DriftSnapshot:
    rows: int
    psi: float
    ks: float
    ood_rate: float


class DriftMonitor:
    """A thread-safe window of the last ``window`` scores and flags of one model."""

    def __init__(self, reference_quantiles: list[float], window: int, min_rows: int) -> None:
        self.quantiles = np.asarray(reference_quantiles, dtype=np.float64)
        self.levels = np.linspace(0.0, 1.0, self.quantiles.size)
        deciles = self.quantiles[:: max(1, (self.quantiles.size - 1) // 10)]
        self.cuts = deciles[1:-1]  # 9 inner edges of 10 equal-mass reference bins
        self.min_rows = min_rows
        self._scores: deque[float] = deque(maxlen=window)
        self._flags: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, scores: np.ndarray, flags: np.ndarray) -> DriftSnapshot | None:
        """Add rows; returns the current statistics once the window holds ``min_rows`` rows."""
        with self._lock:
            self._scores.extend(scores.tolist())
            self._flags.extend(flags.tolist())
            if len(self._scores) < self.min_rows:
                return None
            window = np.fromiter(self._scores, dtype=np.float64)
            rate = float(np.mean(np.fromiter(self._flags, dtype=bool)))
        return DriftSnapshot(rows=window.size, psi=self.psi(window), ks=self.ks(window), ood_rate=rate)

    def psi(self, window: np.ndarray) -> float:
        """Σ (o − e) ln(o / e) over the reference's decile bins (e = 0.1 each)."""
        if self.quantiles[-1] <= self.quantiles[0]:
            return 0.0  # a constant reference (e.g. a deterministic model's zero MI) has no bins
        counts = np.bincount(np.searchsorted(self.cuts, window, side="right"), minlength=self.cuts.size + 1)
        observed = counts / window.size + PSI_EPSILON
        expected = np.full_like(observed, 1.0 / observed.size) + PSI_EPSILON
        return float(np.sum((observed - expected) * np.log(observed / expected)))

    def ks(self, window: np.ndarray) -> float:
        """sup |F_window − F_reference|."""
        ordered = np.sort(window)
        reference_cdf = np.interp(ordered, self.quantiles, self.levels, left=0.0, right=1.0)
        n = ordered.size
        above = np.arange(1, n + 1) / n - reference_cdf
        below = reference_cdf - np.arange(0, n) / n
        return float(max(above.max(), below.max(), 0.0))
