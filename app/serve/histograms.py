"""A Prometheus histogram observed an array at a time: one request's rows in one vectorised call.

``prometheus_client.Histogram.observe`` takes one value under a lock per call; a 1,024-row answer would pay
that a thousand times. ``ArrayHistogram`` counts a whole array into its buckets with numpy and exposes the
same samples (``_bucket{le}``, ``_count``, ``_sum``) when Prometheus scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class ArrayHistogram(Collector):
    """A histogram with one label (``label``) whose observations arrive as arrays."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(buckets, dtype=np.float64)  # upper bounds; +Inf is implied
        self._counts: dict[str, np.ndarray] = {}  # label value -> per-bucket counts, +Inf last
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, value: str, values: np.ndarray) -> None:
        """Count ``values`` (any shape; NaN skipped) under the label ``value``."""
        finite = values[np.isfinite(values)].astype(np.float64, copy=False)
        # le is inclusive: a value equal to a bound belongs to that bucket.
        counts = np.bincount(np.searchsorted(self.bounds, finite, side="left"), minlength=self.bounds.size + 1)
        with self._lock:
            if value not in self._counts:
                self._counts[value] = np.zeros(self.bounds.size + 1, dtype=np.int64)
                self._sums[value] = 0.0
            self._counts[value] += counts
            self._sums[value] += float(finite.sum())

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = {value: (counts.cumsum(), self._sums[value]) for value, counts in self._counts.items()}
        edges = [*map(floatToGoString, self.bounds.tolist()), "+Inf"]  # le as prometheus_client writes it
        for value, (cumulative, total) in sorted(snapshot.items()):
            family.add_metric([value], list(zip(edges, cumulative.tolist(), strict=True)), total)
        return [family]
