"""Drift of the gate's scores over a sliding window of recent predictions, against the calibration split.

Per score (epistemic, density): the population stability index over the reference's deciles and the
Kolmogorov–Smirnov statistic against the reference's piecewise-linear CDF (from its 101 percentiles); and
the windowed share of rows the gate did not accept. A request only appends to the window; the statistics are
computed when the gauges are read (a Prometheus scrape), so their cost does not grow with traffic.

The window is one process's. For drift over every replica's traffic, each score's rows are also counted per
reference decile (``sbnn_drift_score_rows_total``, cumulative): Prometheus sums the counts over replicas and
the recording rule ``sbnn:drift_psi_fleet:1h`` (deploy/prometheus/rules.yml) computes the same PSI from them
over the last hour.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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

    def decile_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each of the reference's 10 decile bins (10,)."""
        return np.bincount(np.searchsorted(self.cuts, values, side="right"), minlength=self.cuts.size + 1)

    def psi(self, window: np.ndarray) -> float:
        """Σ (o − e) ln(o / e) over the reference's decile bins (e = 0.1 each)."""
        if self.quantiles[-1] <= self.quantiles[0]:
            return 0.0  # a constant reference (e.g. a deterministic model's zero MI) has no bins
        observed = self.decile_counts(window) / window.size + PSI_EPSILON
        expected = np.full_like(observed, 1.0 / observed.size) + PSI_EPSILON
        return float(np.sum((observed - expected) * np.log(observed / expected)))

    def ks(self, window: np.ndarray) -> float:
        """sup |F_window − F_reference|; 0 for a constant reference, as PSI (its CDF is a single step)."""
        if self.quantiles[-1] <= self.quantiles[0]:
            return 0.0
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
        # Rows since start per reference decile, for the scores whose reference has deciles (not a constant).
        self._counted = {
            name: np.zeros(r.cuts.size + 1, dtype=np.int64)
            for name, r in self.references.items()
            if r.quantiles[-1] > r.quantiles[0]
        }
        self._lock = threading.Lock()

    def record(self, scores: dict[str, np.ndarray], flags: np.ndarray) -> None:
        """Add rows: each score's values (N_scored,) and every row's flag (N,), True where not accepted. Cheap
        on purpose (the request path calls it): the statistics are computed when read."""
        counts = {name: self.references[name].decile_counts(v) for name, v in scores.items() if name in self._counted}
        with self._lock:
            for name, values in scores.items():
                self._scores[name].extend(values.tolist())
            for name, added in counts.items():
                self._counted[name] += added
            self._flags.extend(flags.tolist())

    def decile_rows(self) -> dict[str, np.ndarray]:
        """Each score's rows counted per reference decile since the monitor started (10,); a score whose
        reference is a constant (a deterministic model's zero MI) has no deciles and is left out."""
        with self._lock:
            return {name: counts.copy() for name, counts in self._counted.items()}

    def snapshot(self) -> DriftSnapshot | None:
        """The statistics of the window, once it holds ``min_rows`` rows (a score's, once it holds ``min_rows``
        scored rows)."""
        with self._lock:
            if len(self._flags) < self.min_rows:
                return None
            rows, rate = len(self._flags), float(np.mean(np.fromiter(self._flags, dtype=bool)))
            windows = {name: np.fromiter(values, dtype=np.float64) for name, values in self._scores.items()}
        drift: dict[str, ScoreDrift | None] = {}
        for name, window in windows.items():
            reference = self.references[name]
            drift[name] = (
                ScoreDrift(window.size, reference.psi(window), reference.ks(window))
                if window.size >= self.min_rows
                else None
            )
        return DriftSnapshot(rows=rows, ood_rate=rate, scores=drift)


class DriftCollector(Collector):
    """The drift gauges of every model's monitor, computed when Prometheus scrapes (not on every request)."""

    def __init__(self) -> None:
        self.monitors: dict[str, DriftMonitor] = {}
        self._weights: dict[str, str] = {}  # model -> the weights' sha256 its monitor's references belong to
        self._lock = threading.Lock()

    def monitor(
        self, model: str, weights: str, references: dict[str, list[float]], window: int, min_rows: int
    ) -> DriftMonitor:
        """The model's monitor, made on first use and made anew when the model's weights change (a reload
        brings its own reference distributions: the old window would be compared with the wrong ones)."""
        with self._lock:
            if self._weights.get(model) != weights:
                self.monitors[model] = DriftMonitor(references, window, min_rows)
                self._weights[model] = weights
            return self.monitors[model]

    def _families(self) -> tuple[GaugeMetricFamily | CounterMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "sbnn_drift_psi",
                "Population stability index of a gate score (epistemic or density) "
                "over the recent window against the calibration split.",
                labels=["model", "score"],
            ),
            GaugeMetricFamily(
                "sbnn_drift_ks",
                "Kolmogorov-Smirnov statistic of a gate score (epistemic or density) "
                "over the recent window against the calibration split.",
                labels=["model", "score"],
            ),
            GaugeMetricFamily(
                "sbnn_drift_ood_rate",
                "Share of rows the gate did not accept (referred or rejected) over the recent window.",
                labels=["model"],
            ),
            GaugeMetricFamily("sbnn_drift_window_rows", "Rows currently in the drift window.", labels=["model"]),
            CounterMetricFamily(
                "sbnn_drift_score_rows",
                "Scored rows per decile bin (1-10) of a gate score's calibration-split distribution, since the "
                "model's weights were loaded (reference: the weights' sha256 prefix).",
                labels=["model", "score", "reference", "decile"],
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        psi, ks, rate, rows, deciles = self._families()
        with self._lock:
            monitors = sorted(self.monitors.items())
            weights = dict(self._weights)
        for model, monitor in monitors:
            reference = weights[model][:12]  # a reload's new reference gets its own series: sums never mix two
            for score, counts in monitor.decile_rows().items():
                for decile, count in enumerate(counts.tolist(), start=1):
                    deciles.add_metric([model, score, reference, str(decile)], count)
            snapshot = monitor.snapshot()
            if snapshot is None:
                continue
            rate.add_metric([model], snapshot.ood_rate)
            rows.add_metric([model], snapshot.rows)
            for score, drift in snapshot.scores.items():
                if drift is not None:
                    psi.add_metric([model, score], drift.psi)
                    ks.add_metric([model, score], drift.ks)
        return (psi, ks, rate, rows, deciles)
