"""Fitting and calibrating the layered gate (app.train.calibrate): the conformal budget holds, the gate is
calibrated on the served bank, and impossible training rows are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.checkpoint.io import load_checkpoint
from app.data.dataset import load_dataset
from app.data.schema import PlausibleRange
from app.errors import DataError
from app.evaluate.scoring import BankScorer, gate_set
from app.gate.spec import Component
from app.train.calibrate import build_gate, conformal_level, fit_density


def test_conformal_level_keeps_the_union_within_the_budget_on_fresh_rows() -> None:
    """Exchangeable rows: the share of new rows above the calibrated level averages at most the budget."""
    rng = np.random.default_rng(0)
    budget, rates = 0.05, []
    for _ in range(400):
        calibration, fresh = rng.integers(0, 1000, 300), rng.integers(0, 1000, 2000)
        level = conformal_level(calibration, budget, reference_rows=1000)
        assert level is not None
        rates.append(float((fresh > level).mean()))
    assert np.mean(rates) <= budget and np.mean(rates) > 0.8 * budget  # valid, and not needlessly strict


def test_conformal_level_needs_enough_rows_and_stays_below_the_reference() -> None:
    assert conformal_level(np.arange(10), 0.02, reference_rows=100) is None  # ⌈11 · 0.98⌉ = 11 > 10 rows
    assert conformal_level(np.full(100, 500), 0.05, reference_rows=100) == 99  # beyond it: always referred


def test_density_is_fitted_with_shrinkage_on_singular_one_hot_columns() -> None:
    rng = np.random.default_rng(1)
    one_hot = np.eye(2)[rng.integers(0, 2, 400)]  # columns sum to 1: a singular sample covariance
    x = np.column_stack([rng.standard_normal((400, 3)), one_hot])
    density, shrinkage = fit_density(x)
    assert 0 < shrinkage < 1 and np.isfinite(density.precision).all()
    assert density(np.array([[0, 0, 0, 1, 0]], np.float32))[0] < density(np.array([[9, 9, 9, 1, 0]], np.float32))[0]


def test_the_tiny_checkpoints_gate_is_calibrated_on_its_bank(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    gate = checkpoint.manifest.gate
    calibration = gate.calibration
    assert (calibration.sampler, calibration.bank_seed, calibration.samples) == ("bank", 0, 64)
    assert calibration.rows == checkpoint.manifest.data.rows["val"]
    assert calibration.reference_rows == checkpoint.manifest.data.rows["train"]
    # The conformal guarantee on its own split: at most ⌊budget · (n + 1)⌋ − 1 validation rows referred.
    assert gate.achieved["val"].not_accepted * calibration.rows <= int(gate.target_fpr * (calibration.rows + 1)) - 1
    assert set(gate.achieved) == {"val", "test"}
    # Scoring validation again through the stored gate and the server's bank gives the recorded rate.
    data = load_dataset(checkpoint.manifest.data)
    scorer = BankScorer(checkpoint.model, calibration.samples, calibration.bank_seed)
    val = gate_set(scorer, checkpoint.gate, checkpoint.manifest.preprocessing, data.val.frame)
    assert 1 - val.result.accepted.mean() == pytest.approx(gate.achieved["val"].not_accepted)
    assert val.result.flags[Component.EPISTEMIC].mean() == pytest.approx(gate.achieved["val"].epistemic)


def test_a_four_sigma_shifted_cohort_is_mostly_referred_and_no_warning_is_raised(tiny_checkpoint: Path) -> None:
    manifest = load_checkpoint(tiny_checkpoint).manifest
    assert manifest.gate.warnings == []  # the shifted file (x1 + 4) is caught: no component below chance


def test_training_rows_outside_the_plausible_bounds_are_refused(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    data = load_dataset(checkpoint.manifest.data)
    features = [
        f.model_copy(update={"plausible": PlausibleRange(low=0)}) if f.name == "x1" else f for f in data.features
    ]
    bounded = type(data)(**{**data.__dict__, "features": features})
    with pytest.raises(DataError, match="training rows lie outside the plausible bounds .*bounds:x1"):
        build_gate(checkpoint.model, bounded, checkpoint.manifest.preprocessing, 0.02, 16)
