"""The PAC-Bayes bound report (:class:`app.evaluate.bound.BoundReport`) as a Markdown section: the per-layer
table, the global terms and what "vacuous" means (for the model card and the comparison report)."""

from __future__ import annotations

from app.evaluate.bound import BoundReport, LayerBound


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def layer_cells(layer: LayerBound, twin: bool) -> list[str]:
    """One layer's row of the bound table (the Markdown section's and ``sbnn bound``'s): index, shape, rank,
    factor entries, mn, √(factors / mn), KL, quadrature error, and with a twin σ_{>r}, retained energy and
    the learning error."""
    m, n = layer.shape
    cells = [
        str(layer.index),
        f"{m} × {n}",
        "-" if layer.rank is None else str(layer.rank),
        f"{layer.factor_parameters:,}",
        f"{layer.dense_parameters:,}",
        f"{layer.complexity_ratio:.3f}",
        f"{layer.kl:,.1f}",
        f"{layer.kl_error:.1e}",
    ]
    if twin:
        cells += [
            _opt(layer.rank_bias, ".4g"),
            _opt(layer.retained_energy, ".4f"),
            _opt(layer.learning_error, ".4g"),
        ]
    return cells


def render_bound_markdown(report: BoundReport) -> str:
    """A Markdown section: the per-layer table, the global terms and what 'vacuous' means."""
    r = report
    twin = r.has_twin
    header = [
        "layer",
        "shape (m × n)",
        "rank",
        "factor entries",
        "mn",
        "√(factors / mn)",
        "KL (nats)",
        "quadrature error (nats)",
    ]
    if twin:
        header += ["σ_{>r}", "retained energy", "‖μ_A μ_Bᵀ − W*_r‖_F"]
    lines = [
        f"## PAC-Bayes bound (McAllester, δ = {r.delta:g})",
        "",
        f"With probability ≥ {1 - r.delta:.0%} over the draw of the N = {r.rows:,} training rows, the expected 0–1 "
        "error of the Gibbs classifier (a fresh weight sample per prediction) is at most "
        "L̂ + sqrt((KL + ln(2√N/δ)) / (2N)). Factor entries: r(m + n) for a low-rank weight, mn for a full-rank "
        "one, m + n for rank-1 scales.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for layer in r.layers:
        cells = layer_cells(layer, twin)
        lines.append("| " + " | ".join(cells) + " |")
    verdict = "**vacuous**" if r.vacuous else "**non-vacuous**"
    lines += [
        "",
        f"- Prior on every stochastic entry: {r.prior}; KL per entry by quadrature with {r.points} nodes, error "
        f"stated as Σ |KL({r.points}) − KL({r.points // 4})| over entries: {r.kl_error:.1e} nats.",
        f"- KL(Q‖P): {r.kl:,.1f} nats over {sum(layer.stochastic_entries for layer in r.layers):,} entries.",
        f"- Gibbs empirical 0–1 risk L̂ (training split, {r.samples} posterior samples, seed {r.seed}): "
        f"{r.gibbs_risk:.4f} (Monte Carlo standard error {r.gibbs_risk_std_error:.1e}); "
        f"majority-class error {r.majority_error:.4f}.",
        f"- ln(2√N/δ) = {r.confidence_term:.3f}; complexity term sqrt((KL + ln(2√N/δ)) / (2N)) = {r.complexity:.4f}.",
        f"- McAllester bound: {r.gibbs_risk:.4f} + {r.complexity:.4f} = {r.bound:.4f}, {verdict}.",
        f"- Below 1 it would need KL ≤ 2N(1 − L̂)² − ln(2√N/δ) = {r.kl_max:,.1f} nats"
        + (" (none: L̂ alone is too high)." if r.kl_max < 0 else "."),
    ]
    if twin and r.twin is not None:
        lines.append(f"- Deterministic twin `{r.twin}`: σ_{{>r}} is the Eckart–Young cost of rank r on its weights.")
    if r.caveat:
        lines.append(f"- Caveat: {r.caveat}")
    lines += [
        "",
        "A vacuous bound (≥ 1) certifies nothing, since any classifier's 0–1 error is at most 1; it does not say "
        "the model is poor, only that its KL is too large for N training rows to guarantee its error.",
    ]
    return "\n".join(lines) + "\n"
