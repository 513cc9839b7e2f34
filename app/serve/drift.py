"""Drift of the gate's scores over a sliding window of recent predictions, against the calibration split.

Per score (epistemic, density): the population stability index over the reference's deciles and the
Kolmogorov–Smirnov statistic against the reference's piecewise-linear CDF (from its 101 percentiles); and
the windowed share of rows the gate did not accept.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

PSI_EPSILON = 1e-4  # keeps empty bins finite; the usual choice in PSI reports


@dataclass(frozen=True)
class ScoreDrift:
    rows: int
    psi: float
    ks: float


@dataclass(frozen=True)
class DriftSnapshot:
    rows: int  # rows in the window, scored or not
    ood_rate: float
    scores: dict[str, ScoreDrift | None]  # None until a score's window holds min_rows rows


class ScoreReference:
    """One score's reference distribution (its 101 percentiles on the calibration split)."""

    def __init__(self, quantiles: list[float]) -> None:
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        self.levels = np.linspace(0.0, 1.0, self.quantiles.size)
        deciles = self.quantiles[:: max(1, (self.quantiles.size - 1) // 10)]
        self.cuts = deciles[1:-1]  # 9 inner edges of 10 equal-mass reference bins

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


class DriftMonitor:
    """A thread-safe window of one model's last ``window`` rows: whether the gate accepted each, and each gate
    score of the rows it scored (a rejected row has none)."""

    def __init__(self, references: dict[str, list[float]], window: int, min_rows: int) -> None:
        self.references = {name: ScoreReference(q) for name, q in references.items()}
        self.min_rows = min_rows
        self._scores: dict[str, deque[float]] = {name: deque(maxlen=window) for name in references}
        self._flags: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, scores: dict[str, np.ndarray], flags: np.ndarray) -> DriftSnapshot | None:
        """Add rows: each score's values (N_scored,) and every row's flag (N,), True where not accepted;
        returns the statistics once the window holds ``min_rows`` rows."""
        with self._lock:
            for name, values in scores.items():
                self._scores[name].extend(values.tolist())
            self._flags.extend(flags.tolist())
            if len(self._flags) < self.min_rows:
                return None
            rows, rate = len(self._flags), float(np.mean(np.fromiter(self._flags, dtype=bool)))
            windows = {name: np.fromiter(values, dtype=np.float64) for name, values in self._scores.items()}
        drift: dict[str, ScoreDrift | None] = {}
        for name, window in windows.items():
            reference = self.references[name]
            drift[name] = (
                ScoreDrift(window.size, reference.psi(window), reference.ks(window))
                if window.size >= self.min_rows else None
            )
        return DriftSnapshot(rows=rows, ood_rate=rate, scores=drift)
