"""The OOD gate: flag a row whose mutual information exceeds the checkpoint's calibrated threshold."""

from __future__ import annotations

from enum import Enum

import numpy as np

from app.checkpoint.manifest import OODGate


class Decision(str, Enum):
    ACCEPT = "accept"
    REFER = "refer"


def percentile_in_reference(scores: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percent (0–100) of the in-distribution reference scoring below each score (from its percentiles)."""
    levels = np.linspace(0.0, 100.0, len(quantiles))
    return np.interp(scores, np.asarray(quantiles), levels, left=0.0, right=100.0)


def flag(scores: np.ndarray, gate: OODGate) -> np.ndarray:
    """(N,) bool: True where the score is strictly above the threshold (then the row is referred).

    Written as "not at or below" so that a NaN score, whatever produced it, is referred rather than accepted.
    """
    return ~(scores <= gate.threshold)


def decide(flags: np.ndarray) -> list[Decision]:
    """Refer what the gate flags, accept the rest."""
    return [Decision.REFER if f else Decision.ACCEPT for f in flags.tolist()]
