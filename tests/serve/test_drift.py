"""Unit tests of the drift statistics (app.serve.drift)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.serve.drift import DriftCollector, DriftMonitor, ScoreReference

# A reference of 101 percentiles of a lognormal score, as checkpoints store them.
REFERENCE_DRAWS = np.random.default_rng(0).lognormal(-5.6, 0.4, 200_000)
REFERENCE = np.quantile(REFERENCE_DRAWS, np.linspace(0.0, 1.0, 101)).tolist()


def _monitor(window: int = 1000, min_rows: int = 50) -> ScoreReference:
    return ScoreReference(REFERENCE)


def test_a_window_from_the_reference_shows_no_drift() -> None:
    window = np.random.default_rng(1).lognormal(-5.6, 0.4, 1000)
    monitor = _monitor()
    assert monitor.psi(window) == pytest.approx(0.0, abs=0.03)
    assert monitor.ks(window) < 0.06


def test_a_shifted_window_shows_drift() -> None:
    monitor = _monitor()
    shifted = np.random.default_rng(2).lognormal(-4.6, 0.4, 1000)  # scores e times higher
    assert monitor.psi(shifted) > 1.0
    assert monitor.ks(shifted) > 0.7
    in_distribution = np.random.default_rng(1).lognormal(-5.6, 0.4, 1000)
    assert monitor.psi(shifted) > 10 * monitor.psi(in_distribution)


def test_ks_is_one_for_a_window_above_the_whole_reference() -> None:
    monitor = _monitor()
    assert monitor.ks(np.full(10, REFERENCE[-1] * 10)) == pytest.approx(1.0)
    assert monitor.ks(np.full(10, REFERENCE[0] / 10)) == pytest.approx(1.0)


def test_constant_reference_has_psi_and_ks_zero() -> None:
    # A deterministic network's mutual information is 0 everywhere: no drift can be measured against it.
    reference = ScoreReference([0.0] * 101)
    assert reference.psi(np.zeros(50)) == 0.0 and reference.ks(np.zeros(50)) == 0.0


def test_snapshot_reports_once_min_rows_are_in_the_window() -> None:
    monitor = DriftMonitor({"epistemic": REFERENCE, "density": REFERENCE}, window=100, min_rows=20)
    scores = np.random.default_rng(3).lognormal(-5.6, 0.4, 19)
    monitor.record({"epistemic": scores, "density": scores}, np.zeros(19, dtype=bool))
    assert monitor.snapshot() is None
    monitor.record({"epistemic": np.array([1.0]), "density": np.array([1.0])}, np.array([True]))
    snapshot = monitor.snapshot()
    assert snapshot is not None
    assert snapshot.rows == 20 and snapshot.ood_rate == pytest.approx(1 / 20)
    assert snapshot.scores["epistemic"] is not None and snapshot.scores["epistemic"].rows == 20
    big = np.full(100, 1.0)
    monitor.record({"epistemic": big, "density": big}, np.ones(100, dtype=bool))  # the window keeps the last 100
    snapshot = monitor.snapshot()
    assert snapshot is not None
    assert snapshot.rows == 100 and snapshot.ood_rate == 1.0
    assert snapshot.scores["density"] is not None and snapshot.scores["density"].ks == pytest.approx(1.0)


def test_rejected_rows_count_in_the_rate_but_add_no_score() -> None:
    monitor = DriftMonitor({"epistemic": REFERENCE}, window=100, min_rows=10)
    in_distribution = np.random.default_rng(4).lognormal(-5.6, 0.4, 8)
    monitor.record({"epistemic": in_distribution}, np.array([False] * 8 + [True] * 4))  # 4 rejected
    snapshot = monitor.snapshot()
    assert snapshot is not None and snapshot.rows == 12 and snapshot.ood_rate == pytest.approx(4 / 12)
    assert snapshot.scores["epistemic"] is None  # 8 scored rows: below min_rows, no statistic yet


def test_the_collector_exports_each_models_gauges_when_scraped() -> None:
    registry = CollectorRegistry()
    collector = DriftCollector()
    registry.register(collector)
    assert registry.get_sample_value("sbnn_drift_ood_rate", {"model": "m"}) is None  # nothing recorded yet
    monitor = collector.monitor("m", "sha-1", {"epistemic": REFERENCE, "density": REFERENCE}, window=50, min_rows=10)
    assert collector.monitor("m", "sha-1", {}, window=1, min_rows=1) is monitor  # one monitor per model
    draws = np.random.default_rng(5).lognormal(-5.6, 0.4, 30)
    monitor.record({"epistemic": draws, "density": draws * 100}, np.zeros(30, dtype=bool))
    assert registry.get_sample_value("sbnn_drift_window_rows", {"model": "m"}) == 30
    assert registry.get_sample_value("sbnn_drift_psi", {"model": "m", "score": "epistemic"}) < 0.5
    assert registry.get_sample_value("sbnn_drift_ks", {"model": "m", "score": "density"}) == pytest.approx(1.0)


def test_decile_counts_summed_over_replicas_give_the_psi_of_all_their_rows() -> None:
    """What the fleet recording rule (deploy/prometheus/rules.yml) relies on: each process's counts per
    reference decile, summed, are the counts of the pooled rows, so the PSI from them is the pooled window's."""
    registry = CollectorRegistry()
    replicas = [DriftCollector(), DriftCollector()]
    registry.register(replicas[0])
    rng = np.random.default_rng(7)
    rows = [rng.lognormal(-5.6, 0.4, 300), rng.lognormal(-4.6, 0.4, 100)]  # the second replica's drifted
    for collector, values in zip(replicas, rows, strict=True):
        monitor = collector.monitor("m", "0123456789abcdef", {"epistemic": REFERENCE}, window=1000, min_rows=10)
        monitor.record({"epistemic": values}, np.zeros(values.size, dtype=bool))
    summed = sum(c.monitors["m"].decile_rows()["epistemic"] for c in replicas)
    assert summed.sum() == 400
    pooled = ScoreReference(REFERENCE)
    observed = summed / summed.sum() + 1e-4
    psi = float(np.sum((observed - 0.1001) * np.log(observed / 0.1001)))
    assert psi == pytest.approx(pooled.psi(np.concatenate(rows)), rel=1e-12)
    # Exported as counters, one series per decile, labelled with the weights' reference.
    labels = {"model": "m", "score": "epistemic", "reference": "0123456789ab"}
    first = [
        registry.get_sample_value("sbnn_drift_score_rows_total", {**labels, "decile": str(d)}) for d in range(1, 11)
    ]
    assert first == replicas[0].monitors["m"].decile_rows()["epistemic"].tolist()
    # A constant reference has no deciles: nothing is counted for it.
    constant = DriftMonitor({"epistemic": [0.0] * 101}, window=10, min_rows=1)
    constant.record({"epistemic": np.zeros(5)}, np.zeros(5, dtype=bool))
    assert constant.decile_rows() == {}


def test_new_weights_start_a_new_window_against_their_own_references() -> None:
    """A reload brings the new checkpoint's reference distributions: the old window is not compared with them."""
    collector = DriftCollector()
    old = collector.monitor("m", "sha-1", {"epistemic": REFERENCE}, window=50, min_rows=10)
    old.record({"epistemic": np.full(20, 0.01)}, np.zeros(20, dtype=bool))
    new = collector.monitor("m", "sha-2", {"epistemic": REFERENCE}, window=50, min_rows=10)
    assert new is not old and new.snapshot() is None  # empty: below min_rows
    assert collector.monitor("m", "sha-2", {}, window=1, min_rows=1) is new


def test_an_array_histogram_exposes_what_prometheus_clients_histogram_would() -> None:
    from prometheus_client import Histogram, generate_latest

    from app.serve.histograms import ArrayHistogram

    values = np.array([0.0, 1e-5, 3e-4, 0.5, 0.7, 2.0, np.nan])
    registry, reference = CollectorRegistry(), CollectorRegistry()
    bulk = ArrayHistogram("h", "doc", "model", (1e-5, 1e-4, 5e-4, 0.5, 0.7))
    registry.register(bulk)
    bulk.observe("m", values[:3])
    bulk.observe("m", values[3:])
    one = Histogram("h", "doc", ["model"], buckets=(1e-5, 1e-4, 5e-4, 0.5, 0.7), registry=reference)
    for value in values[np.isfinite(values)]:
        one.labels("m").observe(float(value))
    ours = [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
    theirs = [line for line in generate_latest(reference).decode().splitlines() if "_created" not in line]
    assert ours == theirs
