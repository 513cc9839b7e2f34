"""PNG figures for evaluation reports: reliability diagrams and OOD score histograms.

matplotlib is an optional dependency (``sbnn[train]``): it is imported inside each function so that the
serving install, which never draws, does not need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from app.evaluate.metrics import _as_scores, ece_from_bins, reliability_bins

__all__ = ["write_reliability_diagram", "write_score_histogram"]

_FIGSIZE = (5.0, 5.0)
_DPI = 120


def pyplot() -> Any:
    """Import pyplot on the non-interactive Agg backend, or explain how to install matplotlib."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib, which is not installed; install it with: pip install 'sbnn[train]'"
        ) from exc
    # Agg: files only, no display needed (servers, CI).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prepare_figure_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, its folder created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_reliability_diagram(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    probs: np.ndarray,
    n_bins: int = 10,
    title: str = "",
) -> None:
    """Write a reliability diagram of probs (N, C) against labels (N,) as a PNG (5x5 in, 120 dpi).

    Top panel: observed frequency per bin (bars) and the (mean predicted probability, observed frequency)
    points, with the diagonal of perfect calibration; the ECE is in the title. Bottom panel: the number
    of samples per bin. Binning follows :func:`app.evaluate.metrics.reliability_bins`: the positive-class
    probability for binary tasks, the top-label confidence for C > 2.
    """
    bins = reliability_bins(labels, probs, n_bins)  # validates the inputs before touching matplotlib
    ece = ece_from_bins(bins)
    binary = np.asarray(probs).shape[1] == 2
    plt = pyplot()

    edges = bins.edges
    centers = (edges[:-1] + edges[1:]) / 2.0
    width = np.diff(edges)
    nonempty = bins.count > 0

    fig, (ax, ax_count) = plt.subplots(
        2,
        1,
        figsize=_FIGSIZE,
        dpi=_DPI,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
        layout="constrained",
    )
    try:
        ax.bar(
            centers[nonempty],
            bins.frequency[nonempty],
            width=width[nonempty],
            color="tab:blue",
            alpha=0.35,
            edgecolor="tab:blue",
            label="observed frequency",
        )
        ax.plot(
            bins.confidence[nonempty],
            bins.frequency[nonempty],
            "o-",
            color="tab:blue",
            markersize=4,
            label="bin mean",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("observed positive frequency" if binary else "accuracy")
        heading = f"{title}\nECE = {ece:.3f}" if title else f"ECE = {ece:.3f}"
        ax.set_title(heading, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)

        ax_count.bar(centers, bins.count, width=width, color="grey", edgecolor="white")
        ax_count.set_ylabel("count")
        ax_count.set_xlabel("predicted probability of positive class" if binary else "confidence (top label)")

        fig.savefig(prepare_figure_path(path), dpi=_DPI, format="png")
    finally:
        plt.close(fig)


def write_score_histogram(
    path: str | os.PathLike[str],
    id_scores: np.ndarray,
    ood: dict[str, np.ndarray],
    threshold: float | None,
    xlabel: str = "mutual information (nats)",
) -> None:
    """Write overlaid density histograms of an OOD score as a PNG (5x5 in, 120 dpi).

    id_scores (N_in,) is drawn as the in-distribution set and each ``ood[name]`` (N_k,) as one OOD set,
    all on shared bins so the densities compare. ``threshold``, when given, is drawn as a vertical line.
    """
    s_in = _as_scores(id_scores, "id_scores")
    sets = {name: _as_scores(scores, f"ood[{name!r}]") for name, scores in ood.items()}
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    plt = pyplot()

    pooled = np.concatenate([s_in, *sets.values()])
    edges = np.histogram_bin_edges(pooled, bins=min(50, max(10, int(np.sqrt(pooled.size)))))

    fig, ax = plt.subplots(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    try:
        ax.hist(s_in, bins=edges, density=True, alpha=0.5, color="tab:blue", label=f"ID (n={s_in.size})")
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, (name, scores) in enumerate(sets.items()):
            color = colors[(k + 1) % len(colors)]
            # Step outlines keep several OOD sets readable on top of the filled ID histogram.
            ax.hist(
                scores,
                bins=edges,
                density=True,
                histtype="step",
                linewidth=1.5,
                color=color,
                label=f"{name} (n={scores.size})",
            )
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        fig.savefig(prepare_figure_path(path), dpi=_DPI, format="png")
    finally:
        plt.close(fig)
