"""Fitting the layered OOD gate after training and calibrating it under one false-positive budget.

1. Reference (training split): the input density is fitted there (Ledoit–Wolf shrinkage covariance of the
   preprocessed rows), and each scored component's training scores become its reference.
2. Calibration (validation split): every row gets a level, the largest rank of its scored components among
   the reference (how many reference scores lie below it), or more than any rank when a support fact or a
   bound refers it whatever the scores. The accepted levels end at the conformal (n + 1)-quantile of the
   validation levels at 1 − budget, so the union refers at most the budget of exchangeable rows; each
   component's threshold on its own score follows (:func:`app.gate.gate.thresholds_for`).
3. Every epistemic score comes from the frozen bank the server answers default requests with (S = the model's
   default samples, bank seed 0), so the served gate is the calibrated one.

The test split's rates are recorded beside the validation's, and each provided OOD set is checked for
components that rank it below chance or a gate that refers less than half of it (the manifest's warnings).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.bnn.network import BayesianMLP
from app.checkpoint.manifest import TargetScale
from app.data.dataset import TabularDataset
from app.data.preprocess import Preprocessing
from app.errors import DataError
from app.evaluate.gate import gate_warnings, in_distribution_rates, set_report
from app.evaluate.regression_scoring import RegressionBankScorer
from app.evaluate.scoring import BankScorer, GatedSet, ScoredSet, gated, score_set
from app.gate.gate import Density, Gate, GateTensors, Screen, Screening, reference_ranks, thresholds_for
from app.gate.spec import (
    REFERENCE_LEVELS,
    Component,
    DensityComponent,
    EpistemicComponent,
    GateCalibration,
    GateFile,
    GateRates,
    GateSpec,
    SupportComponent,
)
from app.gate.text import TextScreening

SERVER_BANK_SEED = 0  # the server's default SBNN_BANK_SEED: the bank the gate is calibrated on


def fit_density(x_train: np.ndarray) -> tuple[Density, float]:
    """Ledoit–Wolf shrinkage covariance of the preprocessed training rows x: (N, d) -> (density, shrinkage).

    Shrinkage keeps the precision finite where one-hot columns make the sample covariance singular.
    """
    from sklearn.covariance import LedoitWolf  # the training extra; serving reads the fitted tensors only

    fitted = LedoitWolf().fit(x_train.astype(np.float64))
    return Density(np.asarray(fitted.location_), np.asarray(fitted.precision_)), float(fitted.shrinkage_)


def conformal_level(levels: np.ndarray, target_fpr: float, reference_rows: int) -> int | None:
    """The largest accepted level: the ⌈(n + 1)(1 − budget)⌉-th smallest of the n calibration levels, capped
    below the reference's size so that a row beyond every reference score is always referred; None when n is
    too small for the budget (no finite quantile)."""
    n = levels.size
    k = math.ceil((n + 1) * (1.0 - target_fpr))
    if k > n:
        return None
    return int(min(np.sort(levels)[k - 1], reference_rows - 1))


def _quantiles(values: np.ndarray) -> list[float]:
    return [float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, REFERENCE_LEVELS))]


def check_training_bounds(screen: Screen) -> None:
    """Training rows are real: one outside a plausible range means the data or the bounds are wrong."""
    if screen.rejected.any():
        row = int(np.flatnonzero(screen.rejected)[0])
        raise DataError(
            f"{int(screen.rejected.sum())} training rows lie outside the plausible bounds (first: training row "
            f"{row}, {screen.reasons[row][0]}); check the data or the bounds"
        )


def build_gate(
    model: BayesianMLP,
    dataset: TabularDataset,
    preprocessing: Preprocessing,
    target_fpr: float,
    samples: int,
    bank_seed: int = SERVER_BANK_SEED,
    on_step: Callable[[str], None] | None = None,
    scale: TargetScale | None = None,
) -> tuple[GateSpec, GateTensors]:
    """Fit and calibrate the gate of a trained MLP ``model`` on ``dataset`` (see the module's docstring);
    ``on_step`` hears a description of each scoring step as it starts (progress only). A regression MLP
    (``scale``: its target's standardisation) is scored by its epistemic variance in the target's unit."""
    screening = Screening(dataset.features, preprocessing)
    check_training_bounds(screening.screen(*preprocessing.raw_values(dataset.train.frame)))
    scorer: BankScorer | RegressionBankScorer
    if scale is not None:
        scorer = RegressionBankScorer(model, samples, bank_seed, target_mean=scale.mean, target_std=scale.std)
    else:
        scorer = BankScorer(model, samples, bank_seed)
    x_train = preprocessing.transform(dataset.train.frame)
    calibration = Calibration(
        screening=screening,
        density_input=x_train,
        train_epistemic=lambda: scorer(x_train).epistemic,
        score=lambda density, split: score_set(scorer, screening, density, preprocessing, split.frame),
        samples=scorer.samples,
        bank_seed=bank_seed,
        epistemic_score="mutual_information" if scale is None else "epistemic_variance",
    )
    return calibrate_gate(calibration, dataset, target_fpr, on_step)


@dataclass(frozen=True)
class Calibration:
    """What calibrating a gate needs of a trained model, whatever its architecture: the screening of its
    schema (or of a tokenizer's output), the density's training inputs (N, d') (rows, sequence summaries or a
    text's pooled encoder state), the training split's epistemic scores (computed on call, after the progress
    line), how to score a split given the fitted density, and the bank the scores come from."""

    screening: Screening | TextScreening
    density_input: np.ndarray
    train_epistemic: Callable[[], np.ndarray]
    score: Callable[[Density, Any], ScoredSet]
    samples: int
    bank_seed: int
    density_kind: Literal["row", "sequence_mean_and_last_step", "text_encoder_mean"] = "row"
    epistemic_score: Literal["mutual_information", "epistemic_variance"] = "mutual_information"


def calibrate_gate(
    calibration: Calibration,
    dataset: Any,
    target_fpr: float,
    on_step: Callable[[str], None] | None = None,
) -> tuple[GateSpec, GateTensors]:
    """Fit the density on the training inputs, take the reference scores, calibrate the level on
    ``dataset.val`` and record the rates on ``dataset.test`` and each of ``dataset.ood`` (splits with ``y``)."""

    def step(text: str) -> None:
        if on_step is not None:
            on_step(f"calibrating the gate: {text}")

    x_train = calibration.density_input
    step(f"scoring the training split ({x_train.shape[0]:,} rows, {calibration.samples} samples)")
    density, shrinkage = fit_density(x_train)
    reference = {
        Component.DENSITY: np.sort(density(x_train)),
        Component.EPISTEMIC: np.sort(calibration.train_epistemic()),
    }
    tensors = GateTensors(density, reference)
    n_reference = x_train.shape[0]

    step(f"scoring the validation split ({len(dataset.val.y):,} rows)")
    scored_val = calibration.score(density, dataset.val)
    screen, val_density, val_epistemic = scored_val.screen, scored_val.density, scored_val.predictions.epistemic
    scored = ~screen.rejected  # the percentiles describe the rows the gate scores
    ranks = reference_ranks(reference, val_density, val_epistemic)
    levels = np.where(screen.rejected | screen.support_flag, n_reference + 1, ranks)
    level = conformal_level(levels, target_fpr, n_reference)
    thresholds = thresholds_for(level, reference)

    placeholder = {"val": GateRates(rows=1, not_accepted=0, rejected=0, support=0, density=0, epistemic=0)}
    spec = GateSpec(
        target_fpr=target_fpr,
        support=SupportComponent(
            reference_quantiles=_quantiles(screen.support_score[scored]),
            score="text_excess" if calibration.density_kind == "text_encoder_mean" else "training_range_excess_sd",
        ),
        density=DensityComponent(
            threshold=thresholds[Component.DENSITY],
            reference_quantiles=_quantiles(val_density[scored]),
            shrinkage=shrinkage,
            dimension=x_train.shape[1],
            input=calibration.density_kind,
        ),
        epistemic=EpistemicComponent(
            threshold=thresholds[Component.EPISTEMIC],
            reference_quantiles=_quantiles(val_epistemic[scored]),
            score=calibration.epistemic_score,
        ),
        calibration=GateCalibration(
            rows=levels.size,
            reference_rows=n_reference,
            level=level,
            samples=calibration.samples,
            bank_seed=calibration.bank_seed,
        ),
        achieved=placeholder,
        tensors=GateFile(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
    )
    gate = Gate(spec, calibration.screening, tensors)

    def answered(split: Any) -> GatedSet:
        return gated(gate, calibration.score(gate.density, split))

    step(f"scoring the test split ({len(dataset.test.y):,} rows)")
    val, test = gated(gate, scored_val), answered(dataset.test)
    achieved = {"val": in_distribution_rates(val), "test": in_distribution_rates(test)}
    reports = {}
    for name, split in dataset.ood.items():
        step(f"scoring the OOD set {name} ({len(split.y):,} rows)")
        reports[name] = set_report(gate, test, answered(split))
    warnings = gate_warnings(reports)
    if level is None:
        warnings.insert(
            0,
            f"{levels.size} validation rows are too few for a {target_fpr:.1%} budget: the density "
            "and epistemic components refer nothing (only bounds and support act)",
        )
    elif achieved["val"].not_accepted > target_fpr:
        warnings.insert(
            0,
            f"the gate refers {achieved['val'].not_accepted:.1%} of validation rows, over its "
            f"{target_fpr:.1%} budget: that many lie beyond the training data (support, or beyond "
            "every training score), and those are always referred",
        )
    return spec.model_copy(update={"achieved": achieved, "warnings": warnings}), tensors
