"""The Markdown model card written next to a checkpoint by ``sbnn evaluate``."""

from __future__ import annotations

from typing import Any

from app.checkpoint.manifest import Manifest


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_card(manifest: Manifest, result: dict[str, Any], figures: bool = True) -> str:
    """A model card: intended use, data, metrics, OOD gate operating point, PAC-Bayes bound (when the
    result has one), limits."""
    m, test, gate = manifest, result["test"], manifest.ood
    ranks = ", ".join("-" if r is None else str(r) for r in m.ranks)
    shapes = " → ".join(str(s) for s in [m.network.in_features, *m.network.hidden, m.network.out_features])
    lines = [
        f"# Model card: {m.name} (version {m.version})",
        "",
        "## Intended use",
        f"Predicts `{m.task.target}` ({' / '.join(m.task.labels)}) for rows like the training population, and "
        "says when a row is unlike it: the **OOD gate** refers a row whose epistemic uncertainty (mutual "
        "information between prediction and weights) exceeds the calibrated threshold. A referred row needs "
        "a human; an accepted row still carries its probability and uncertainty. Decision support only, "
        "not a diagnosis.",
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
        "## OOD detection (score: mutual information; in-distribution = test split)",
        "| set | rows | AUROC | AUPR-OOD | AUPR-In | FPR@95%TPR | flagged | AUROC (std score) | task AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["ood"].items():
        mi, std = entry["mutual_information"], entry["predictive_std"]
        task_auroc = entry.get("classification", {}).get("auroc")
        lines.append(
            f"| `{name}` | {mi['n_ood']} | {_fmt(mi['auroc'])} | {_fmt(mi['aupr_ood'])} | {_fmt(mi['aupr_in'])} | "
            f"{_fmt(mi['fpr_at_95_tpr'])} | {_fmt(entry['flagged_rate'])} | {_fmt(std['auroc'])} | "
            f"{_fmt(task_auroc) if task_auroc is not None else '-'} |"
        )
    lines += [
        "",
        "## The OOD gate's operating point",
        f"- Threshold on mutual information: {gate.threshold:.6g} nats, set at the {1 - gate.target_fpr:.0%} "
        f"quantile of the {gate.calibration_rows} in-distribution `{gate.calibration_split}` rows "
        f"(target false-positive rate {gate.target_fpr:.0%}, achieved {gate.achieved_fpr:.1%}).",
        f"- On the test split {test['flagged_rate']:.1%} of rows are referred.",
    ]
    if "bound" in result:
        # Imported here: the bound module needs torch, rendering a card from stored metrics otherwise does not.
        from app.evaluate.bound import BoundReport, render_bound_markdown

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
        lines.append("- A deterministic network has no epistemic uncertainty: its OOD score is 0 and the gate never "
                     "refers.")
    if figures:
        lines += ["", "## Figures", "![reliability diagram](reliability.png)", "",
                  "![OOD score histograms](ood_scores.png)"]
    return "\n".join(lines) + "\n"
