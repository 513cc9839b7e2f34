"""The Markdown model card written next to a sequence (LSTM) checkpoint, or a regression MLP, by ``sbnn evaluate``.

It follows :mod:`app.evaluate.card`'s structure (intended use, model, data, metrics, OOD detection, the gate,
limits, figures) from a result of :func:`app.evaluate.sequence_evaluate.evaluate_sequences`.
"""

from __future__ import annotations

from typing import Any

from app.checkpoint.manifest import Manifest, TaskType
from app.evaluate.card import _fmt, _gate_table, _share, _threshold

# metrics.json key -> the card's column
REGRESSION_COLUMNS = {
    "rmse": "RMSE",
    "mae": "MAE",
    "nll": "NLL",
    "crps": "CRPS",
    "picp_50": "PICP50",
    "picp_90": "PICP90",
    "picp_95": "PICP95",
    "mpiw_90": "MPIW90",
    "calibration_error": "calibration error",
}
CLASSIFICATION_COLUMNS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "accuracy": "accuracy",
    "nll": "NLL",
    "brier": "Brier",
    "ece": "ECE",
}


def _unit(manifest: Manifest) -> str:
    return manifest.task.unit or "the target's unit"


def _item(manifest: Manifest) -> str:
    """What one input is: a sequence (LSTM), a text (Transformer) or a row (a regression MLP)."""
    return "sequence" if manifest.sequence is not None else "text" if manifest.text is not None else "row"


def _intended_use(m: Manifest) -> list[str]:
    if m.task.type is TaskType.REGRESSION:
        what = (
            f"Forecasts `{m.task.target}` (in {_unit(m)}) from "
            + ("a sequence of time steps" if m.sequence is not None else "a row of features")
            + " like the training population's, as a predictive distribution: a mean, central intervals and its "
            "variance split into aleatoric (noise) and epistemic (the model's own doubt: the variance of the "
            "weight samples' means)."
        )
        epistemic = "a high epistemic variance"
    else:
        source = "a short text" if m.text is not None else "a sequence of time steps"
        what = f"Predicts `{m.task.target}` ({' / '.join(m.task.labels or [])}) from {source}."
        epistemic = "high epistemic uncertainty (mutual information between prediction and weights)"
    item, anywhere = _item(m), " at any step" if m.sequence is not None else ""
    impossible = "no readable token" if m.text is not None else f"a physically impossible value{anywhere}"
    return [
        "## Intended use",
        f"{what} The layered **OOD gate** says when a {item} is unlike the training ones: it rejects one with "
        f"{impossible} (no prediction) and refers one outside the training support"
        f"{anywhere}, far from the training {item}s in input density, or with {epistemic}. A referred {item} "
        "needs a human; an accepted one still carries its uncertainty. Decision support only.",
    ]


def _model(m: Manifest) -> list[str]:
    n, s = m.network, m.sequence
    ranks = ", ".join("-" if r is None else str(r) for r in m.ranks)
    head = "a Gaussian mean and variance" if m.task.type is TaskType.REGRESSION else f"{n.out_features} logit(s)"
    if m.text is not None:
        bayesian = ", ".join(p.value for p in n.bayesian)  # type: ignore[union-attr]
        kind = (
            f"- Kind: `{m.kind.value}` Transformer encoder, {n.layers} block(s) of d_model {n.d_model}, "  # type: ignore[union-attr]
            f"{n.heads} heads, d_ff {n.d_ff}, Bayesian parts: {bayesian}; head {head}; ranks per map: {ranks}"  # type: ignore[union-attr]
        )
    elif s is not None:
        kind = (
            f"- Kind: `{m.kind.value}` LSTM, {n.layers} layer(s) of width {n.hidden} over {n.in_features} inputs "
            f"per step, head {head}; ranks per map: {ranks}"  # type: ignore[union-attr]
        )
    else:
        shapes = " → ".join(str(w) for w in [n.in_features, *n.hidden, n.out_features])  # type: ignore[misc]
        kind = f"- Kind: `{m.kind.value}` MLP, network {shapes}, head {head}; ranks per layer: {ranks}"
    lines = [
        "## Model",
        kind,
        f"- Parameters: {m.parameter_count:,}; prior: {n.prior.kind.value}; default Monte Carlo samples: "
        f"{m.default_samples}",
        f"- Weights sha256: `{m.weights.sha256}`",
        f"- Trained on {m.training.device} in {m.training.duration_seconds:.1f} s, best epoch "
        f"{m.training.best_epoch} of {m.training.epochs_run}, seed {m.training.seed}",
    ]
    features = ", ".join(f"`{f.name}`" + (f" ({f.unit})" if f.unit else "") for f in m.features)
    if m.text is not None:
        t = m.text
        lines += [
            "",
            "### Text schema",
            f"- Tokenizer: WordPiece, {t.vocab_size:,} tokens, lower-cased (`{t.tokenizer.file}`, sha256 "
            f"`{t.tokenizer.sha256[:16]}…`)",
            f"- The network reads the first **{t.max_length} tokens** ([CLS] included; truncation `{t.truncation}`); "
            f"a request's text may hold up to {t.max_bytes:,} UTF-8 bytes and {t.max_tokens:,} tokens",
        ]
    elif s is None:
        lines += ["", f"- Features ({len(m.features)}): {features}"]
    else:
        lines += [
            "",
            "### Sequence schema",
            f"- Features per step ({len(m.features)}): {features}",
            f"- Max length: **{s.max_length} steps**; a longer sequence keeps its last {s.max_length} (truncation "
            f"`{s.truncation}`), a shorter one is zero-padded after its end (padding `{s.padding}`, masked by "
            f"`{s.masking}`); steps are used as sent (resampling `{s.resampling}`), oldest first",
            f"- Steps ordered by: `{s.time}`" if s.time else "- Steps ordered by: their order in the request",
        ]
    if m.task.type is TaskType.REGRESSION and m.task.scale is not None:
        lines.append(
            f"- Target: `{m.task.target}` in {_unit(m)}; the network predicts it standardised (training mean "
            f"{m.task.scale.mean:.4g}, std {m.task.scale.std:.4g}) and every answer is mapped back to that unit"
        )
    return lines


def _data(m: Manifest) -> list[str]:
    return [
        "## Data",
        f"- Source: `{m.data.source}` (sha256 `{m.data.sha256[:16]}…`)",
        f"- In-distribution population: {m.data.population}",
        f"- {_item(m).capitalize()}s: " + ", ".join(f"{k} {v:,}" for k, v in m.data.rows.items()),
        "",
        "OOD evaluation sets and why each is a real shift:",
        *([f"- `{name}`: {why}" for name, why in m.data.ood_sets.items()] or ["- none"]),
    ]


def _metrics(m: Manifest, result: dict[str, Any]) -> list[str]:
    regression = m.task.type is TaskType.REGRESSION
    columns = REGRESSION_COLUMNS if regression else CLASSIFICATION_COLUMNS
    lines = [
        f"## Metrics ({result['samples']} samples, seed {result['seed']})",
        "| split | " + " | ".join(columns.values()) + " | rows | not accepted |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for split in ("test", "val"):
        entry = result.get(split, {})
        if all(c in entry for c in columns):
            rows = entry["rows"] if regression else entry["n"]
            cells = " | ".join(_fmt(entry[c]) for c in columns)
            lines.append(f"| {split} | {cells} | {rows} | {_share(entry['not_accepted_rate'])} |")
    if regression:
        lines += [
            "",
            f"RMSE, MAE, CRPS and MPIW (mean width of the central interval) in {_unit(m)}; NLL in nats of that "
            "unit's density; PICP: the share of targets inside the central 50/90/95% interval; calibration error: "
            "mean |observed − nominal| coverage over the levels 5%…95%.",
        ]
        coverage = result.get("coverage", {})
        if "test" in coverage:
            points = ", ".join(
                f"{nominal:.0%} → {observed:.1%}"
                for nominal, observed in zip(coverage["nominal"], coverage["test"], strict=True)
                if round(nominal * 100) % 10 == 0 or nominal == 0.95
            )
            lines += ["", f"Coverage on test (nominal → observed): {points}."]
    else:
        lines += ["", f"ECE: {result['ece_binning']}."]
    return lines


def _ood(m: Manifest, result: dict[str, Any]) -> list[str]:
    if not result["ood"]:
        return ["## OOD detection", "No OOD set was provided."]
    regression = m.task.type is TaskType.REGRESSION
    scores = list(next(iter(result["ood"].values()))["scores"])
    task = "RMSE | NLL | PICP90" if regression else "AUROC | NLL | ECE"
    lines = [
        "## OOD detection (in-distribution = test split)",
        "AUROC / AUPR-OOD / FPR at 95% TPR of each score against the test split; the task's own metrics where "
        "the set's targets are known.",
        "",
        "| set | rows | " + " | ".join(f"`{s}`" for s in scores) + f" | not accepted | {task} |",
        "|---|---|" + "---|" * (len(scores) + 4),
    ]
    for name, entry in result["ood"].items():
        cells = [
            f"{_fmt(o['auroc'])} / {_fmt(o['aupr_ood'])} / {_fmt(o['fpr_at_95_tpr'])}"
            for o in (entry["scores"][s] for s in scores)
        ]
        known = entry.get("regression" if regression else "classification")
        keys = ("rmse", "nll", "picp_90") if regression else ("auroc", "nll", "ece")
        own = " | ".join(_fmt(known[k]) for k in keys) if known else " | ".join("-" for _ in keys)
        lines.append(
            f"| `{name}` | {entry['rows']} | " + " | ".join(cells) + f" | {_share(entry['not_accepted_rate'])} | "
            f"{own} |"
        )
    return lines


def _warnings(m: Manifest, result: dict[str, Any]) -> list[str]:
    """The evaluation's warnings, then training's that it does not repeat (the budget's, for one)."""
    found = list(result.get("gate", {}).get("warnings", []))
    return found + [w for w in m.gate.warnings if w not in found]


def _gate(m: Manifest, result: dict[str, Any]) -> list[str]:
    gate, c = m.gate, m.gate.calibration
    thresholds = {k.value: t for k, t in gate.thresholds().items()}
    bounded = [f for f in m.features if f.plausible is not None]
    if gate.epistemic.score == "epistemic_variance":
        epistemic = f"epistemic variance above {_threshold(thresholds['epistemic'])} ({_unit(m)})²"
    else:
        epistemic = f"mutual information above {_threshold(thresholds['epistemic'])} nats"
    item, steps = _item(m), m.sequence is not None
    support = (
        f"more tokens than the longest training text ({m.text.support.longest_tokens}), or, in a text of "
        f"{m.text.support.min_words}+ words, more words outside the vocabulary than any training text "
        f"({m.text.support.oov_rate:.0%})"
        if m.text is not None
        else "a step outside the training range of a numeric feature, missing where training had no missing value, or "
        "an unseen category (every step sent, also those past the max length)"
        if steps
        else "a value outside the training range of a numeric feature, missing where training had no missing "
        "value, or an unseen category"
    )
    lines = [
        "## The OOD gate",
        f"One false-positive budget of {gate.target_fpr:.1%} for the union of support, density and epistemic, "
        f"calibrated on the {c.rows} `{c.split}` {item}s (conformal, against the {c.reference_rows} "
        f"`{c.reference_split}` {item}s' scores) with the server's frozen bank ({c.samples} samples, seed "
        f"{c.bank_seed}).",
        "",
        "- bounds (reject): "
        + (
            "a text the tokenizer reads nothing in"
            if m.text is not None
            else ", ".join(f"`{f.name}` {f.plausible}{' ' + f.unit if f.unit else ''}" for f in bounded) or "none given"
        )
        + (", at any step sent" if steps else ""),
        f"- support (refer): {support}",
        f"- density (refer): Mahalanobis distance (Ledoit–Wolf, shrinkage {gate.density.shrinkage:.3f}) of the "
        + (
            "mean of the kept steps beside the last step"
            if steps
            else "encoder's pooled state (posterior mean, before the last block)"
            if m.text is not None
            else "preprocessed row"
        )
        + ", above "
        + _threshold(thresholds["density"]),
        f"- epistemic (refer): {epistemic}",
        "",
        "| split | rows | not accepted | rejected | support | density | epistemic |",
        "|---|---|---|---|---|---|---|",
    ]
    rates = {**{f"{k} (training)": v.model_dump() for k, v in gate.achieved.items()}}
    for split in ("val", "test"):
        if split in result.get("gate", {}):
            rates[f"{split} (this evaluation)"] = result["gate"][split]
    for split, r in rates.items():
        shares = [r[k] for k in ("not_accepted", "rejected", "support", "density", "epistemic")]
        lines.append(f"| {split} | {r['rows']} | " + " | ".join(_share(v) for v in shares) + " |")
    if result.get("gate", {}).get("ood"):
        lines += [
            "",
            "AUROC of each component against the test split, and the share each refers on its own "
            f"(the gate's share counts referred and rejected {item}s).",
            "",
            *_gate_table(result["gate"]["ood"]),
        ]
    warnings = _warnings(m, result)
    if warnings:
        lines += ["", "**Warnings** (what this gate misses):", *[f"- **{w}**" for w in warnings]]
    return lines


def _limits(m: Manifest) -> list[str]:
    s = m.sequence
    lines = ["## Limits"]
    if m.text is not None:
        lines.append(
            f"- Only the first {m.text.max_length} tokens reach the network; trained on English film-review "
            "snippets, one sentence each."
        )
    if s is not None:
        lines.append(
            f"- Only the last {s.max_length} steps reach the network: an older history is screened by the gate but "
            "does not inform the prediction."
        )
    lines += [
        "- Trained on one population; the OOD sets above show which shifts the gate sees and which it misses "
        "(every warning above, verbatim). A shift in outcomes without a shift in the inputs is invisible to any "
        "input-based score.",
    ]
    if m.task.type is TaskType.REGRESSION:
        lines.append(
            "- The intervals are calibrated on this population only (see the coverage above); recalibrate before "
            "use elsewhere."
        )
    else:
        lines.append("- Probabilities are calibrated on this population only; recalibrate before use elsewhere.")
    lines.append("- Monte Carlo estimates vary with the seed; the response's seed and sample count replay an answer.")
    if m.kind.value == "deterministic":
        lines.append(
            "- A deterministic network has no epistemic uncertainty, so the gate's epistemic component never "
            "refers (bounds, support and density still do)."
        )
    return lines


FIGURE_TITLES = {
    "forecast.png": "forecast stretch of the test split",
    "coverage.png": "interval coverage",
    "reliability.png": "reliability diagram",
    "ood_scores.png": "OOD score histograms",
}


def render_sequence_card(manifest: Manifest, result: dict[str, Any], figures: list[str] | None = None) -> str:
    """A sequence model's (or a regression MLP's) card from ``result`` (:func:`evaluate_sequences`);
    ``figures``: the PNG names written beside it, each linked."""
    m = manifest
    lines = [f"# Model card: {m.name} (version {m.version})", ""]
    for section in (_intended_use(m), _model(m), _data(m), _metrics(m, result), _ood(m, result), _gate(m, result)):
        lines += [*section, ""]
    lines += _limits(m)
    if figures:
        lines += ["", "## Figures"]
        for name in figures:
            lines += [f"![{FIGURE_TITLES.get(name, name)}]({name})", ""]
        lines.pop()
    return "\n".join(lines) + "\n"
