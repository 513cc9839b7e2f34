"""PNG figures for regression reports: a forecast stretch with its intervals, and interval coverage curves.

matplotlib is imported lazily through :func:`app.evaluate.plots.pyplot` (Agg backend), as in plots.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.evaluate.metrics import _as_scores
from app.evaluate.plots import _DPI, _FIGSIZE, prepare_figure_path, pyplot
from app.evaluate.regression import RegressionSummary

__all__ = ["write_coverage_plot", "write_forecast_plot"]

_FORECAST_FIGSIZE = (10.0, 4.0)  # a time stretch is wide: 10 x 4 in at the house DPI


def _select_rows(rows: slice | np.ndarray, n: int) -> np.ndarray:
    """Row indices (M,), M >= 1, all within [0, n)."""
    index = np.arange(n)[rows] if isinstance(rows, slice) else np.asarray(rows)
    if index.ndim != 1 or index.size == 0:
        raise ValueError(f"rows must select a non-empty 1-D stretch, got shape {index.shape}")
    if index.dtype == np.bool_:
        if index.size != n:
            raise ValueError(f"a boolean rows mask must have {n} entries, got {index.size}")
        index = np.flatnonzero(index)
        if index.size == 0:
            raise ValueError("rows selects no row")
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"rows must be a slice, integer indices or a boolean mask, got dtype {index.dtype}")
    if index.min() < -n or index.max() >= n:
        raise ValueError(f"rows out of range for {n} rows")
    return index


def _segments(xs: np.ndarray) -> list[slice]:
    """Runs of ``xs`` (M,) without a gap: a step over twice the median step (a week that another split holds)
    starts a new run, so lines and bands are not drawn across it."""
    if xs.size < 3:
        return [slice(0, xs.size)]
    if np.issubdtype(xs.dtype, np.datetime64):
        steps = np.diff(xs.astype("datetime64[s]").astype(np.int64)).astype(np.float64)
    elif np.issubdtype(xs.dtype, np.number):
        steps = np.diff(xs.astype(np.float64))
    else:
        return [slice(0, xs.size)]  # no arithmetic on these: one run
    typical = float(np.median(steps))
    breaks = np.flatnonzero(steps > 2 * typical) + 1 if typical > 0 else np.zeros(0, dtype=int)
    edges = [0, *breaks.tolist(), xs.size]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def write_forecast_plot(
    path: str | os.PathLike[str],
    y: np.ndarray,
    summary: RegressionSummary,
    rows: slice | np.ndarray,
    title: str = "",
    unit: str = "",
    levels: tuple[float, ...] = (0.5, 0.9),
    x: np.ndarray | None = None,
) -> Path:
    """Write a stretch of rows as a PNG (10 x 4 in) and return its path.

    y (N,) observed targets as points joined by a thin line, the predictive mean (N,) as a line, and the
    central intervals at ``levels`` shaded (the widest lightest). ``rows`` selects the stretch (M,); the x
    axis is the row's index within it, or ``x`` (M,) when given (e.g. hours or dates), where a gap of more
    than twice the median step breaks the lines and bands.
    """
    targets = _as_scores(y, "y")
    if targets.size != summary.rows:
        raise ValueError(f"length mismatch: y has {targets.size} rows, the summary has {summary.rows}")
    index = _select_rows(rows, summary.rows)
    missing = [level for level in levels if level not in summary.lower]
    if missing:
        raise ValueError(f"summary lacks interval levels {missing}")
    if x is None:
        xs: np.ndarray = np.arange(index.size)
    else:
        xs = np.asarray(x)
        if xs.shape != (index.size,):
            raise ValueError(f"x must have shape ({index.size},) to match the rows selected, got {xs.shape}")
    plt = pyplot()

    fig, ax = plt.subplots(figsize=_FORECAST_FIGSIZE, dpi=_DPI, layout="constrained")
    try:
        ordered = sorted(levels, reverse=True)  # widest first, so narrower bands are drawn on top
        for n, part in enumerate(_segments(xs)):
            rows = index[part]

            def label(text: str, first: bool = n == 0) -> str | None:
                return text if first else None  # one legend entry per series, not per run

            for k, level in enumerate(ordered):
                alpha = 0.15 + 0.25 * (k + 1) / len(ordered)  # the widest lightest
                ax.fill_between(
                    xs[part],
                    summary.lower[level][rows],
                    summary.upper[level][rows],
                    color="tab:blue",
                    alpha=alpha,
                    linewidth=0,
                    label=label(f"{round(level * 100)}% interval"),
                )
            ax.plot(xs[part], summary.mean[rows], color="tab:blue", linewidth=1.5, label=label("predictive mean"))
            ax.plot(xs[part], targets[rows], ".-", color="black", linewidth=0.5, markersize=3, label=label("observed"))
        ax.set_xlabel("row within stretch" if x is None else "")
        ax.set_ylabel(unit)
        if title:
            ax.set_title(title, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        out = prepare_figure_path(path)
        fig.savefig(out, dpi=_DPI, format="png")
    finally:
        plt.close(fig)
    return out


def write_coverage_plot(
    path: str | os.PathLike[str],
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str = "",
) -> Path:
    """Write observed interval coverage against nominal level as a PNG (5 x 5 in) and return its path.

    ``curves[name]`` is (nominal (L,), observed (L,)), e.g. from
    :func:`app.evaluate.regression.coverage_curve`; the diagonal of perfect calibration is dashed.
    """
    if not curves:
        raise ValueError("curves is empty")
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (nominal, observed) in curves.items():
        nom = _as_scores(nominal, f"curves[{name!r}] nominal")
        obs = _as_scores(observed, f"curves[{name!r}] observed")
        if nom.size != obs.size:
            raise ValueError(f"curves[{name!r}]: nominal has {nom.size} levels, observed has {obs.size}")
        checked[name] = (nom, obs)
    plt = pyplot()

    fig, ax = plt.subplots(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    try:
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        for name, (nom, obs) in checked.items():
            ax.plot(nom, obs, "o-", markersize=3, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("nominal central-interval level")
        ax.set_ylabel("observed coverage")
        if title:
            ax.set_title(title, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        out = prepare_figure_path(path)
        fig.savefig(out, dpi=_DPI, format="png")
    finally:
        plt.close(fig)
    return out
