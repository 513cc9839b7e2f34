"""Mean ± std over seeds and Markdown tables: the cells of the comparison's report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "n": int(array.size),
    }


def ms(entry: Mapping[str, float], digits: int = 3) -> str:
    """``mean ± std`` of a :func:`mean_std` entry (the mean alone for one value)."""
    if entry["n"] > 1:
        return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"
    return f"{entry['mean']:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "r") -> str:
    """A Markdown table; every column but the first right-aligned unless ``align`` is not "r"."""
    separator = ["---"] + ["--:" if align == "r" else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(separator) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
