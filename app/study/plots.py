"""Figures of the comparison (`sbnn compare`): one panel per kind, so kinds compare at a glance.

matplotlib is imported inside each function (through :func:`app.evaluate.plots.pyplot`), as for the model
card figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.evaluate.metrics import ece_from_bins, reliability_bins
from app.evaluate.plots import prepare_figure_path, pyplot

__all__ = [
    "ParetoPoint",
    "write_ood_histogram_grid",
    "write_rank_ablation",
    "write_reliability_grid",
    "write_risk_coverage",
]

_GRID_DPI = 110
_PANEL = 3.2  # inches per grid panel
# Scores at or below this are drawn in the lowest bin of a log axis (a deterministic network's MI is 0).
_LOG_FLOOR = 1e-7


def _grid(count: int, columns: int = 4) -> tuple[int, int]:
    columns = min(columns, count)
    return math.ceil(count / columns), columns


def _save_grid(fig: object, axes: np.ndarray, used: int, note: str, path: str | os.PathLike[str]) -> None:
    """Blank the grid's unused panels, title the figure with ``note`` and write it as a PNG."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    if note:
        fig.suptitle(note, fontsize=9)  # type: ignore[attr-defined]
    fig.savefig(prepare_figure_path(path), dpi=_GRID_DPI, format="png")  # type: ignore[attr-defined]


def write_reliability_grid(
    path: str | os.PathLike[str], panels: Mapping[str, tuple[np.ndarray, np.ndarray]], n_bins: int, note: str = ""
) -> None:
    """One reliability diagram per kind: ``panels[label] = (labels (N,), probs (N, C))``; ECE in each title."""
    plt = pyplot()
    rows, columns = _grid(len(panels))
    fig, axes = plt.subplots(
        rows, columns, figsize=(_PANEL * columns, _PANEL * rows), dpi=_GRID_DPI, squeeze=False, layout="constrained"
    )
    try:
        for ax, (label, (labels, probs)) in zip(axes.flat, panels.items(), strict=False):
            bins = reliability_bins(labels, probs, n_bins)
            nonempty = bins.count > 0
            centers = (bins.edges[:-1] + bins.edges[1:]) / 2.0
            ax.bar(
                centers[nonempty],
                bins.frequency[nonempty],
                width=np.diff(bins.edges)[nonempty],
                color="tab:blue",
                alpha=0.3,
                edgecolor="tab:blue",
            )
            ax.plot(bins.confidence[nonempty], bins.frequency[nonempty], "o-", color="tab:blue", markersize=3)
            ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{label}: ECE {ece_from_bins(bins):.3f}", fontsize=9)
            ax.set_xlabel("predicted risk", fontsize=8)
            ax.set_ylabel("observed frequency", fontsize=8)
            # Bin counts on a twin axis: where most predictions lie matters as much as the gaps.
            twin = ax.twinx()
            twin.bar(centers, bins.count, width=np.diff(bins.edges), color="grey", alpha=0.15)
            twin.set_yticks([])
        _save_grid(fig, axes, len(panels), note, path)
    finally:
        plt.close(fig)


def write_ood_histogram_grid(
    path: str | os.PathLike[str],
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray], float | None]],
    xlabel: str = "mutual information (nats, log scale)",
    note: str = "",
) -> None:
    """One panel per kind: share of rows per bin of the score on the in-distribution test split (filled) and on
    each OOD set (outlines), log-spaced bins; ``panels[label] = (id (N,), {set: (N_k,)}, gate threshold or None)``."""
    plt = pyplot()
    rows, columns = _grid(len(panels))
    fig, axes = plt.subplots(
        rows, columns, figsize=(_PANEL * columns, _PANEL * rows), dpi=_GRID_DPI, squeeze=False, layout="constrained"
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    try:
        for ax, (label, (id_scores, ood, threshold)) in zip(axes.flat, panels.items(), strict=False):
            clipped = {name: np.maximum(np.asarray(s, dtype=np.float64), _LOG_FLOOR) for name, s in ood.items()}
            inside = np.maximum(np.asarray(id_scores, dtype=np.float64), _LOG_FLOOR)
            pooled = np.concatenate([inside, *clipped.values()])
            low, high = np.log10(pooled.min()), np.log10(pooled.max())
            edges = np.logspace(low, high if high > low else low + 1.0, 40)
            # Share of each set per bin (not a density, which log-spaced bins would distort).
            ax.hist(
                inside,
                bins=edges,
                weights=np.full(inside.size, 1.0 / inside.size),
                alpha=0.45,
                color=colors[0],
                label="ID test",
            )
            for k, (name, scores) in enumerate(clipped.items()):
                ax.hist(
                    scores,
                    bins=edges,
                    weights=np.full(scores.size, 1.0 / scores.size),
                    histtype="step",
                    linewidth=1.3,
                    color=colors[(k + 1) % len(colors)],
                    label=name,
                )
            if threshold is not None and threshold > 0:
                ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="gate")
            if pooled.max() <= _LOG_FLOOR:
                ax.text(
                    0.5,
                    0.5,
                    "score is 0 for every row\n(no epistemic term)",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=8,
                )
            ax.set_xscale("log")
            ax.set_ylabel("share of the set", fontsize=8)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
        first = axes.flat[0]
        first.legend(fontsize=7, loc="upper left")
        _save_grid(fig, axes, len(panels), note, path)
    finally:
        plt.close(fig)


def write_risk_coverage(
    path: str | os.PathLike[str],
    referred: np.ndarray,
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    note: str = "",
) -> None:
    """Error of the cases kept against the fraction referred, one panel per referral score:
    ``curves[score][label] = (mean error (F,), std over seeds (F,))`` at the fractions ``referred`` (F,)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(curves), figsize=(5.0 * len(curves), 4.2), dpi=_GRID_DPI, squeeze=False, layout="constrained"
    )
    try:
        for ax, (score, by_label) in zip(axes.flat, curves.items(), strict=True):
            for label, (mean, std) in by_label.items():
                line = ax.plot(referred, mean, linewidth=1.4, label=label)[0]
                ax.fill_between(referred, mean - std, mean + std, color=line.get_color(), alpha=0.12)
            ax.set_xlabel("fraction of cases referred (most uncertain first)")
            ax.set_ylabel("error rate of the cases kept")
            ax.set_title(f"referral by {score}", fontsize=10)
            ax.set_xlim(0, float(referred.max()))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        if note:
            fig.suptitle(note, fontsize=9)
        fig.savefig(prepare_figure_path(path), dpi=_GRID_DPI, format="png")
    finally:
        plt.close(fig)


@dataclass(frozen=True)
class ParetoPoint:
    """A point of the ablation plot: parameters, a metric's mean and std over seeds, and its label."""

    label: str
    parameters: int
    mean: float
    std: float
    ablation: bool  # a rank of the ablation (joined by a line) or another kind (a marker)


def _frontier(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both fewer parameters and a higher metric, by parameters."""
    ordered = sorted(points, key=lambda p: (p.parameters, -p.mean))
    front: list[ParetoPoint] = []
    for point in ordered:
        if not front or point.mean > front[-1].mean:
            front.append(point)
    return front


def _pareto_panel(ax: object, points: Sequence[ParetoPoint], ylabel: str) -> None:
    ranks = [p for p in points if p.ablation]
    others = [p for p in points if not p.ablation]
    ax.errorbar(
        [p.parameters for p in ranks],
        [p.mean for p in ranks],
        yerr=[p.std for p in ranks],
        fmt="o-",
        color="tab:blue",
        capsize=2,
        markersize=4,
        label="lowrank, rank r",
    )
    for p in ranks:
        ax.annotate(p.label, (p.parameters, p.mean), textcoords="offset points", xytext=(3, 4), fontsize=7)
    markers = "sD^vP*X"
    for k, p in enumerate(others):
        ax.errorbar(
            [p.parameters],
            [p.mean],
            yerr=[p.std],
            fmt=markers[k % len(markers)],
            capsize=2,
            markersize=6,
            label=p.label,
        )
    front = _frontier(points)
    ax.step(
        [p.parameters for p in front],
        [p.mean for p in front],
        where="post",
        color="black",
        alpha=0.35,
        linewidth=1,
        label="Pareto frontier",
    )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def write_rank_ablation(
    path: str | os.PathLike[str],
    auroc: Sequence[ParetoPoint],
    ood_auroc: Sequence[ParetoPoint],
    energy: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    marked_rank: int | None = None,
    paper_energy: float | None = None,
) -> None:
    """Three panels: test AUROC and OOD AUROC (MI) against parameters (Pareto plots of the rank ablation
    beside the other kinds), and the singular-value energy a trained deterministic network keeps at each rank,
    ``energy[layer] = (ranks (R,), mean (R,), std (R,))``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16.0, 4.6), dpi=_GRID_DPI, layout="constrained")
    try:
        _pareto_panel(axes[0], auroc, "test AUROC")
        axes[0].set_title("accuracy of the risk against size", fontsize=10)
        axes[0].legend(fontsize=7, loc="lower right")
        _pareto_panel(axes[1], ood_auroc, "OOD AUROC (MI), mean over OOD sets")
        axes[1].set_title("OOD detection against size", fontsize=10)
        ax = axes[2]
        for layer, (ranks, mean, std) in energy.items():
            line = ax.plot(ranks, mean, "o-", markersize=3, label=f"layer {layer}")[0]
            ax.fill_between(ranks, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        if marked_rank is not None:
            ax.axvline(marked_rank, color="grey", linestyle=":", linewidth=1, label=f"r = {marked_rank}")
        if paper_energy is not None:
            ax.axhline(
                paper_energy, color="tab:red", linestyle="--", linewidth=1, label=f"paper at r = 15: {paper_energy:.0%}"
            )
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("rank r (log scale)")
        ax.set_ylabel("share of Σσ² in the top r singular values")
        ax.set_title("singular-value energy of a trained deterministic net", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.savefig(prepare_figure_path(path), dpi=_GRID_DPI, format="png")
    finally:
        plt.close(fig)
