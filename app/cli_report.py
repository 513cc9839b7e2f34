"""The tables ``sbnn evaluate``, ``bound`` and ``info`` print: rendering only, from results computed elsewhere.

Names that come from users or data (models, sets, warnings) are escaped: rich would read ``[...]`` as markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.cli_options import threshold_text, warn


def print_evaluation(console: Console, name: str, seed: int, result: dict[str, Any]) -> None:
    """The test split's metrics, the gate's rates and its AUROCs on the OOD sets and the stress suite."""
    if "sequence" in result or "text" in result or result.get("task") == "regression":  # sequence_evaluate's
        print_sequence_evaluation(console, name, seed, result)
        return
    test = result["test"]
    table = Table(title=escape(f"{name}: test split ({result['samples']} samples, seed {seed})"))
    for column in ("AUROC", "AUPRC", "accuracy", "NLL", "Brier", "ECE", "rows"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{test[k]:.3f}" for k in ("auroc", "auprc", "accuracy", "nll", "brier", "ece")), str(test["n"]))
    console.print(table)
    gate = result["gate"]
    rates = gate["test"]
    console.print(
        f"gate on the test split: {rates['not_accepted']:.1%} not accepted at a {gate['target_fpr']:.1%} budget "
        f"(support {rates['support']:.1%}, density {rates['density']:.1%}, epistemic {rates['epistemic']:.1%})"
    )
    for title, reports in (("OOD sets", gate["ood"]), ("stress suite", gate["stress"])):
        ood = Table(title=f"The gate on the {title}: AUROC vs the test split, and share not accepted")
        for column in ("set", "rows", "support", "density", "epistemic", "gate", "not accepted", "rejected"):
            ood.add_column(column, justify="right")
        for set_name, entry in reports.items():
            auroc = entry["auroc"]
            ood.add_row(
                escape(set_name),
                str(entry["rows"]),
                *(f"{auroc[k]:.3f}" for k in ("support", "density", "epistemic", "gate")),
                f"{entry['not_accepted']:.1%}",
                f"{entry['rejected']:.1%}",
            )
        console.print(ood)
    for warning in gate["warnings"]:
        warn(warning)


def print_sequence_evaluation(console: Console, name: str, seed: int, result: dict[str, Any]) -> None:
    """A sequence model's test and validation metrics (a regression's in the target's unit), the gate's rates,
    and per OOD set the AUROC of each score against the test split and the share not accepted."""
    regression = result["task"] == "regression"
    if regression:
        unit = f" ({result['unit']})" if result.get("unit") else ""
        columns = {"RMSE": "rmse", "MAE": "mae", "NLL": "nll", "CRPS": "crps", "PICP90": "picp_90"}
        columns |= {"MPIW90": "mpiw_90", "calib. error": "calibration_error"}
        scores = {"epistemic var.": "epistemic_variance", "total var.": "total_variance"}
    else:
        unit, scores = "", {"MI": "mutual_information", "entropy": "total_entropy"}
        columns = {"AUROC": "auroc", "accuracy": "accuracy", "NLL": "nll", "Brier": "brier", "ECE": "ece"}
    scores |= {"density": "density", "gate": "gate"}
    table = Table(title=escape(f"{name}: {result['target']}{unit} ({result['samples']} samples, seed {seed})"))
    for column in ("split", *columns, "rows", "not accepted"):
        table.add_column(column, justify="right")
    for split in ("test", "val"):
        entry = result.get(split, {})
        if all(k in entry for k in columns.values()):
            rows = entry["rows"] if regression else entry["n"]
            cells = (f"{entry[k]:.3f}" for k in columns.values())
            table.add_row(split, *cells, str(rows), f"{entry['not_accepted_rate']:.1%}")
    console.print(table)
    gate = result["gate"]
    rates = gate["test"]
    console.print(
        f"gate on the test split: {rates['not_accepted']:.1%} not accepted at a {gate['target_fpr']:.1%} budget "
        f"(support {rates['support']:.1%}, density {rates['density']:.1%}, epistemic {rates['epistemic']:.1%})"
    )
    if result["ood"]:
        ood = Table(title="OOD sets: AUROC of each score vs the test split, share not accepted, the task on the set")
        task = ("RMSE", "NLL", "PICP90") if regression else ("AUROC", "NLL", "ECE")
        for column in ("set", "rows", *scores, "not accepted", *task):
            ood.add_column(column, justify="right")
        for set_name, entry in result["ood"].items():
            known = entry.get("regression" if regression else "classification")
            keys = ("rmse", "nll", "picp_90") if regression else ("auroc", "nll", "ece")
            ood.add_row(
                escape(set_name),
                str(entry["rows"]),
                *(f"{entry['scores'][k]['auroc']:.3f}" for k in scores.values()),
                f"{entry['not_accepted_rate']:.1%}",
                *(f"{known[k]:.3f}" if known else "-" for k in keys),
            )
        console.print(ood)
    for warning in gate["warnings"]:
        warn(warning)


def print_bound(console: Console, report: Any) -> None:
    """A :class:`app.evaluate.bound.BoundReport` as two tables (per layer, then the bound) and its status."""
    from app.evaluate.bound_markdown import layer_cells  # torch: only once a bound is printed

    layers = Table(title=escape(f"{report.model} ({report.kind}): KL per layer, prior {report.prior}"))
    # Factor entries: r(m+n) lowrank, mn fullrank, m+n for rank1's scales.
    columns = ["layer", "m × n", "rank", "factor entries", "mn", "√(factors/mn)", "KL (nats)", "quad. error"]
    if report.has_twin:
        columns += ["σ>r", "energy kept", "‖μ_Aμ_Bᵀ − W*_r‖"]
    for column in columns:
        layers.add_column(column, justify="right")
    for layer in report.layers:
        cells = layer_cells(layer, report.has_twin)
        layers.add_row(*cells)
    console.print(layers)
    summary = Table(title=f"McAllester bound, δ = {report.delta:g}", show_header=False)
    summary.add_row("N (training rows)", f"{report.rows:,}")
    summary.add_row(
        "KL(Q‖P)", f"{report.kl:,.1f} nats (quadrature, {report.points} nodes, error {report.kl_error:.1e})"
    )
    summary.add_row(
        "Gibbs 0–1 risk L̂",
        f"{report.gibbs_risk:.4f} ± {report.gibbs_risk_std_error:.1e} ({report.samples} samples, seed {report.seed})",
    )
    summary.add_row("majority-class error", f"{report.majority_error:.4f}")
    summary.add_row("ln(2√N/δ)", f"{report.confidence_term:.3f}")
    summary.add_row("sqrt((KL + ln(2√N/δ))/(2N))", f"{report.complexity:.4f}")
    summary.add_row("bound", f"{report.bound:.4f}")
    summary.add_row("KL for a bound below 1", f"≤ {report.kl_max:,.1f} nats")
    console.print(summary)
    status = "[bold red]vacuous[/] (bound ≥ 1)" if report.vacuous else "[bold green]non-vacuous[/] (bound < 1)"
    console.print(f"status: {status}")
    if report.caveat:
        console.print(f"caveat: {escape(report.caveat)}")


def print_info(console: Console, m: Any) -> None:
    """A verified checkpoint's :class:`app.checkpoint.manifest.Manifest` ``m`` as one table."""
    table = Table(title=escape(f"{m.name} (version {m.version}): verified"), show_header=False)
    table.add_row("kind", m.kind.value)
    if m.sequence is None:
        widths = [m.network.in_features, *m.network.hidden, m.network.out_features]
        table.add_row("network", " → ".join(map(str, widths)))
    else:  # an LSTM: layers of one width, over steps of at most max_length
        n = m.network
        table.add_row(
            "network",
            f"LSTM {n.layers} × {n.hidden} over {n.in_features} inputs per step (max {m.sequence.max_length} "
            f"steps) → {n.out_features}",
        )
    table.add_row("ranks", str(m.ranks))
    table.add_row("parameters", f"{m.parameter_count:,}")
    table.add_row("features", escape(", ".join(f.name for f in m.features)))
    if m.task.labels is not None:
        table.add_row("labels", escape(", ".join(m.task.labels)))
    else:  # a regression
        table.add_row("target", escape(f"{m.task.target} ({m.task.unit or 'no unit given'})"))
    gate = m.gate
    table.add_row(
        "OOD gate",
        f"budget {gate.target_fpr:.1%}; refers {gate.achieved['val'].not_accepted:.1%} of validation, "
        + (f"{gate.achieved['test'].not_accepted:.1%} of test; " if "test" in gate.achieved else "")
        + f"density > {threshold_text(gate.density.threshold)}, "
        + (
            f"mutual information > {threshold_text(gate.epistemic.threshold)} nats"
            if gate.epistemic.score == "mutual_information"
            else f"epistemic variance > {threshold_text(gate.epistemic.threshold)}"
        ),
    )
    bounded = [f"{f.name} {f.plausible}" for f in m.features if f.plausible is not None]
    table.add_row("plausible bounds", escape(", ".join(bounded)) or "none")
    table.add_row("default samples", str(m.default_samples))
    table.add_row("weights sha256", m.weights.sha256)
    test = m.metrics.get("test", {})
    for label, key in (("test AUROC", "auroc"), ("test RMSE", "rmse")):  # a classifier's, or a regression's
        if key in test:
            table.add_row(label, f"{test[key]:.3f}")
    console.print(table)
