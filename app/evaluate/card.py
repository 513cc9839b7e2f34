"""The Markdown model card written next to a checkpoint by ``sbnn evaluate``."""

from __future__ import annotations

from typing import Any

from app.checkpoint.manifest import Manifest


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _share(value: float) -> str:
    return f"{value:.1%}"


def _gate_table(reports: dict[str, Any]) -> list[str]:
    lines = [
        "| set | rows | AUROC support | density | epistemic | gate | refers: support | density | epistemic | "
        "gate | of which rejected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        a, f = r["auroc"], r["referred"]
        shares = [f[k] for k in ("support", "density", "epistemic")] + [r["not_accepted"], r["rejected"]]
        lines.append(
            f"| `{name}` | {r['rows']} | "
            + " | ".join(_fmt(a[k]) for k in ("support", "density", "epistemic", "gate"))
            + " | "
            + " | ".join(_share(v) for v in shares)
            + " |"
        )
    return lines


def gate_section(manifest: Manifest, evaluation: dict[str, Any] | None) -> list[str]:
    """The card's gate section: operating point, rates on validation and test, warnings, and (from an
    evaluation) what each component catches on every OOD and stress set."""
    gate = manifest.gate
    c = gate.calibration
    bounded = [f for f in manifest.features if f.plausible is not None]
    thresholds = {c.value: t for c, t in gate.thresholds().items()}
    lines = [
        "## The OOD gate",
        f"One false-positive budget of {gate.target_fpr:.1%} for the union of support, density and epistemic, "
        f"calibrated on the {c.rows} `{c.split}` rows (conformal, against the {c.reference_rows} `{c.reference_split}` "
        f"rows' scores) with the server's frozen bank ({c.samples} samples, seed {c.bank_seed}).",
        "",
        "- bounds (reject): "
        + (", ".join(f"`{f.name}` {f.plausible}{' ' + f.unit if f.unit else ''}" for f in bounded) or "none given"),
        "- support (refer): outside the training range of a numeric feature (its training minimum and maximum), "
        "missing where training had no missing value, or an unseen category",
        f"- density (refer): Mahalanobis distance (Ledoit–Wolf covariance, shrinkage {gate.density.shrinkage:.3f}) "
        f"above {_threshold(thresholds['density'])}",
        f"- epistemic (refer): mutual information above {_threshold(thresholds['epistemic'])} nats",
        "",
        "| split | rows | not accepted | rejected | support | density | epistemic |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, rates in gate.achieved.items():
        shares = (rates.not_accepted, rates.rejected, rates.support, rates.density, rates.epistemic)
        lines.append(f"| {split} | {rates.rows} | " + " | ".join(_share(v) for v in shares) + " |")
    # The evaluation's warnings come from the numbers in this card's tables; training's from its own scoring.
    warnings = evaluation["warnings"] if evaluation is not None else gate.warnings
    if warnings:
        lines += ["", "**Warnings** (what this gate misses):", *[f"- **{w}**" for w in warnings]]
    if evaluation is not None:
        lines += [
            "",
            "AUROC of each component against the test split, and the share each refers on its own "
            "(the gate's share counts referred and rejected rows).",
            "",
            "### OOD sets",
            "",
            *_gate_table(evaluation["ood"]),
            "",
            "### Stress suite (generated from the test split)",
            "",
            *_gate_table(evaluation["stress"]),
        ]
    return lines


def _threshold(value: float | None) -> str:
    return "(never: too few calibration rows)" if value is None else f"{value:.4g}"


def render_card(manifest: Manifest, result: dict[str, Any], figures: bool = True) -> str:
    """A model card: intended use, data, metrics, OOD gate operating point, PAC-Bayes bound (when the
    result has one), limits."""
    m, test = manifest, result["test"]
    ranks = ", ".join("-" if r is None else str(r) for r in m.ranks)
    shapes = " → ".join(str(s) for s in [m.network.in_features, *m.network.hidden, m.network.out_features])
    lines = [
        f"# Model card: {m.name} (version {m.version})",
        "",
        "## Intended use",
        f"Predicts `{m.task.target}` ({' / '.join(m.task.labels)}) for rows like the training population, and "
        "says when a row is unlike it: the layered **OOD gate** rejects a row with a physically impossible value "
        "(no prediction) and refers a row outside the training support, far from the training rows in input "
        "density, or with high epistemic uncertainty (mutual information between prediction and weights). A "
        "referred row needs a human; an accepted row still carries its probability and uncertainty. Decision "
        "support only, not a diagnosis.",
        "",
        "## Model",
        f"- Kind: `{m.kind.value}`, network {shapes}, activation {m.network.activation.value}, ranks per layer: "
        f"{ranks}",
        f"- Parameters: {m.parameter_count:,}; prior: {m.network.prior.kind.value}; "
        f"default Monte Carlo samples: {m.default_samples}",
        f"- Weights sha256: `{m.weights.sha256}`",
        f"- Trained on {m.training.device} in {m.training.duration_seconds:.1f} s, best epoch "
        f"{m.training.best_epoch} of {m.training.epochs_run}, seed {m.training.seed}",
        "",
        "## Data",
        f"- Source: `{m.data.source}` (sha256 `{m.data.sha256[:16]}…`)",
        f"- In-distribution population: {m.data.population}",
        "- Rows: " + ", ".join(f"{k} {v:,}" for k, v in m.data.rows.items()),
        "- Features: " + ", ".join(f"`{f.name}`" + (f" ({f.unit})" if f.unit else "") for f in m.features),
        "",
        "OOD evaluation sets and why each is a real shift:",
        *[f"- `{name}`: {why}" for name, why in m.data.ood_sets.items()],
        "",
        f"## Metrics (test split, {result['samples']} samples, seed {result['seed']})",
        "| AUROC | AUPRC | accuracy | NLL | Brier | ECE | rows |",
        "|---|---|---|---|---|---|---|",
        "| " + " | ".join(_fmt(test[k]) for k in ("auroc", "auprc", "accuracy", "nll", "brier", "ece", "n")) + " |",
        "",
        f"ECE: {result['ece_binning']}.",
        "",
        "## OOD detection by mutual information alone (in-distribution = test split)",
        "| set | rows | AUROC | AUPR-OOD | AUPR-In | FPR@95%TPR | AUROC (std score) | not accepted | task AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["ood"].items():
        mi, std = entry["mutual_information"], entry["predictive_std"]
        task_auroc = entry.get("classification", {}).get("auroc")
        lines.append(
            f"| `{name}` | {mi['n_ood']} | {_fmt(mi['auroc'])} | {_fmt(mi['aupr_ood'])} | {_fmt(mi['aupr_in'])} | "
            f"{_fmt(mi['fpr_at_95_tpr'])} | {_fmt(std['auroc'])} | {_fmt(entry['not_accepted_rate'])} | "
            f"{_fmt(task_auroc) if task_auroc is not None else '-'} |"
        )
    lines += ["", *gate_section(m, result.get("gate"))]
    if "bound" in result:
        # Imported here: the bound module needs torch, rendering a card from stored metrics otherwise does not.
        from app.evaluate.bound import BoundReport
        from app.evaluate.bound_markdown import render_bound_markdown

        lines += ["", *render_bound_markdown(BoundReport.from_dict(result["bound"])).rstrip("\n").split("\n")]
    lines += [
        "",
        "## Limits",
        "- Trained on one cohort; the OOD sets above show which shifts the gate sees and which it misses. "
        "A shift in outcome rates without a shift in the features (see the late-enrolment set when "
        "present) is invisible to any input-based score.",
        "- Probabilities are calibrated on this population only; recalibrate before use elsewhere.",
        "- Monte Carlo estimates vary with the seed; the response's seed and sample count replay an answer.",
    ]
    if m.kind.value == "deterministic":
        lines.append(
            "- A deterministic network has no epistemic uncertainty: its mutual information is 0, so the "
            "gate's epistemic component never refers (bounds, support and density still do)."
        )
    if figures:
        lines += [
            "",
            "## Figures",
            "![reliability diagram](reliability.png)",
            "",
            "![OOD score histograms](ood_scores.png)",
        ]
    return "\n".join(lines) + "\n"
