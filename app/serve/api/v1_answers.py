"""The /v1 answer's parts shared by every task: the gate's components per row, and a regression's predictions
(``RegressionPredictionOut``) and Monte Carlo error. Built column by column from the data plane's arrays, as
the classifier's (api/v1.py); a regression of any architecture answers through ``regression_predictions``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.gate.gate import GateResult
from app.gate.spec import Component
from app.serve.backend import RegressionScores, Scores
from app.serve.dataplane import InferenceResult


def nullable(values: np.ndarray) -> list[float | None]:
    """(N,) numbers -> Python floats, None where not finite (a rejected row's score)."""
    out: list[float | None] = values.tolist()
    for row in np.flatnonzero(~np.isfinite(values)).tolist():
        out[row] = None
    return out


def component(gate: GateResult, which: Component, threshold: float | None = None) -> list[dict[str, Any]]:
    """One component's answer for every row, from its arrays in one pass each: ``ComponentOut``, or
    ``SupportOut`` for the support (which has no threshold)."""
    columns = zip(
        nullable(gate.scores[which]), nullable(gate.percentiles[which]), gate.flags[which].tolist(), strict=True
    )
    if which is Component.SUPPORT:
        return [{"score": score, "percentile": percentile, "flag": flag} for score, percentile, flag in columns]
    return [
        {"score": score, "threshold": threshold, "percentile": percentile, "flag": flag}
        for score, percentile, flag in columns
    ]


def gate_parts(result: InferenceResult) -> list[dict[str, Any]]:
    """Each row's ``gate``, ``decision``, ``reasons`` and ``details`` (``GateOut`` and the three fields)."""
    gate, thresholds = result.gate, result.manifest.gate.thresholds()
    support = component(gate, Component.SUPPORT)
    density = component(gate, Component.DENSITY, thresholds[Component.DENSITY])
    epistemic = component(gate, Component.EPISTEMIC, thresholds[Component.EPISTEMIC])
    return [
        {
            "gate": {"support": sup, "density": den, "epistemic": epi},
            "decision": decision.value,
            "reasons": reasons,
            "details": details,
        }
        for sup, den, epi, decision, reasons, details in zip(
            support, density, epistemic, gate.decisions, gate.reasons, gate.details, strict=True
        )
    ]


def regression_predictions(result: InferenceResult) -> list[dict[str, Any]]:
    """A regression's predictions (``RegressionPredictionOut``): mean, unit, intervals and variances in the
    target's unit (None for a rejected row), then the gate's parts."""
    s, unit = result.scores, result.manifest.task.unit
    empty: list[Any] = [None] * result.rows
    means, intervals, variances = empty, empty, empty
    if isinstance(s, RegressionScores):
        means = result.per_row(s.mean)
        levels = [f"{level:g}" for level in s.intervals]  # "0.5", "0.9", "0.95"
        bounds = np.stack([np.stack(pair, axis=1) for pair in s.intervals.values()], axis=1)  # (N, levels, 2)
        intervals = [None if b is None else dict(zip(levels, b, strict=True)) for b in result.per_row(bounds)]
        names = ("total", "aleatoric", "epistemic")
        columns = np.stack([s.total, s.aleatoric, s.epistemic], axis=1)
        variances = [None if v is None else dict(zip(names, v, strict=True)) for v in result.per_row(columns)]
    return [
        {"mean": mean, "unit": unit, "intervals": interval, "variance": variance, **parts}
        for mean, interval, variance, parts in zip(means, intervals, variances, gate_parts(result), strict=True)
    ]


def mc_error(result: InferenceResult) -> dict[str, Any] | None:
    """The Monte Carlo error bounds (``MonteCarloErrorOut`` or ``RegressionMonteCarloErrorOut``)."""
    s = result.scores
    if isinstance(s, RegressionScores):
        return {"mean": s.mean_error}
    if isinstance(s, Scores):
        mi = s.mc_error.mutual_information
        return {"probability": s.mc_error.probability, "mutual_information": mi if math.isfinite(mi) else None}
    return None
