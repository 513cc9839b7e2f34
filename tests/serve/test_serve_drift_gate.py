"""Unit tests of the drift statistics (app.serve.drift) and the OOD gate (app.serve.gate)."""

from __future__ import annotations

import numpy as np
import pytest

from app.checkpoint.manifest import OODGate
from app.serve.drift import DriftMonitor
from app.serve.gate import Decision, decide, flag, percentile_in_reference

# A reference of 101 percentiles of a lognormal score, as checkpoints store them.
REFERENCE_DRAWS = np.random.default_rng(0).lognormal(-5.6, 0.4, 200_000)
REFERENCE = np.quantile(REFERENCE_DRAWS, np.linspace(0.0, 1.0, 101)).tolist()


def _monitor(window: int = 1000, min_rows: int = 50) -> DriftMonitor:
    return DriftMonitor(REFERENCE, window, min_rows)


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


def test_constant_reference_has_psi_zero() -> None:
    monitor = DriftMonitor([0.0] * 101, window=100, min_rows=1)
    assert monitor.psi(np.array([0.0, 0.5, 1.0])) == 0.0


def test_record_reports_once_min_rows_are_in_the_window() -> None:
    monitor = _monitor(window=100, min_rows=20)
    scores = np.random.default_rng(3).lognormal(-5.6, 0.4, 19)
    assert monitor.record(scores, np.zeros(19, dtype=bool)) is None
    snapshot = monitor.record(np.array([1.0]), np.array([True]))
    assert snapshot is not None
    assert snapshot.rows == 20 and snapshot.ood_rate == pytest.approx(1 / 20)
    snapshot = monitor.record(np.full(100, 1.0), np.ones(100, dtype=bool))  # the window keeps the last 100
    assert snapshot is not None
    assert snapshot.rows == 100 and snapshot.ood_rate == 1.0 and snapshot.ks == pytest.approx(1.0)


def test_percentile_in_reference() -> None:
    quantiles = [0.0, 1.0, 2.0, 3.0, 4.0]  # 0th, 25th, 50th, 75th, 100th percentiles
    scores = np.array([-1.0, 0.0, 2.0, 3.5, 4.0, 9.0])
    assert percentile_in_reference(scores, quantiles).tolist() == [0.0, 0.0, 50.0, 87.5, 100.0, 100.0]


def test_percentile_in_a_real_reference() -> None:
    median = float(np.median(REFERENCE_DRAWS))
    percent = percentile_in_reference(np.array([REFERENCE[0] / 2, median, REFERENCE[-1] * 2]), REFERENCE)
    assert percent[0] == 0.0 and percent[2] == 100.0
    assert percent[1] == pytest.approx(50.0, abs=0.5)


def test_flag_is_strictly_above_the_threshold_and_refers() -> None:
    gate = OODGate(
        threshold=0.01, target_fpr=0.05, achieved_fpr=0.05, reference_quantiles=REFERENCE, calibration_rows=100,
        calibration_samples=64, calibration_seed=0,
    )
    flags = flag(np.array([0.0, 0.01, 0.0100001, 1.0, np.nan]), gate)
    assert flags.tolist() == [False, False, True, True, True]  # a NaN score is referred, never accepted
    assert decide(flags) == [Decision.ACCEPT, Decision.ACCEPT, Decision.REFER, Decision.REFER, Decision.REFER]
