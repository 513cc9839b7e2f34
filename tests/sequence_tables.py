"""Synthetic long tables for the tiny sequence checkpoints of the tests (importable from any test folder, unlike
a conftest, whose name each folder's own conftest shadows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_visits(path: Path, continuous: bool, patients: int = 90, seed: int = 0, shift: float = 0.0) -> Path:
    """A long table of patients with 1..6 visits of a lab and a ward, written to ``path``: the outcome at each
    visit follows the lab's running mean (continuous, or whether it exceeds 5); ``shift`` moves every lab
    value (an OOD cohort). For the tiny sequence checkpoints of the tests."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        days = np.sort(rng.choice(np.arange(400), size=int(rng.integers(1, 7)), replace=False))
        labs = rng.normal(5.0, 1.0, size=days.size).cumsum() / np.arange(1, days.size + 1) + shift
        for day, lab in zip(days, labs, strict=True):
            outcome = round(float(lab) * 2.0 + rng.normal(0, 0.3), 4) if continuous else int(lab > 5.0 + shift)
            rows.append({"patient": f"p{p:03d}", "day": int(day), "lab": float(lab), "ward": f"w{p % 3}", "y": outcome})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
