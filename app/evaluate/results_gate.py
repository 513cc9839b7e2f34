"""The comparison report's gate section: per kind, what each component and the combined gate catch.

From every run's ``metrics["gate"]`` (written by :func:`app.evaluate.evaluate.evaluate`): the in-distribution
test rates, and on each OOD and stress set the AUROC of each component and the share each refers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.evaluate.gate import RANKED
from app.evaluate.tables import mean_std, ms, table

RATES = ("referred", "support", "density", "epistemic")
SHARES = ("support", "density", "epistemic", "gate", "rejected")


def _sets(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = entries[0]
    return {
        name: {
            "rows": first[name]["rows"],
            "description": first[name].get("description", ""),
            "auroc": {c: mean_std([e[name]["auroc"][c] for e in entries]) for c in RANKED},
            "referred": {c: mean_std([e[name]["referred"][c] for e in entries]) for c in SHARES},
        }
        for name in first
    }


def summarise_gate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over one kind's seeds of its gate metrics."""
    gates = [r["metrics"]["gate"] for r in results]
    return {
        "target_fpr": gates[0]["target_fpr"],
        "test": {k: mean_std([g["test"][k] for g in gates]) for k in RATES},
        "ood": _sets([g["ood"] for g in gates]),
        "stress": _sets([g["stress"] for g in gates]),
        "warnings": sorted({w for g in gates for w in g["warnings"]}),
    }


def _percent(entry: Mapping[str, float]) -> str:
    scaled = {**entry, "mean": 100 * entry["mean"], "std": 100 * entry["std"]}
    return ms(scaled, 1) + "%"


def render_gate(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown of the gate section, from each kind's summary (with its ``gate`` entry)."""
    labels = list(summary)
    budget = summary[labels[0]]["gate"]["target_fpr"]
    out = [
        "## The layered gate\n",
        "Each served model answers through its gate (see [gate.md](gate.md)): bounds (reject), support, input "
        "density and epistemic uncertainty (refer), one false-positive budget for the union "
        f"({budget:.0%}), calibrated on validation with the served bank. AUROCs pool the set with the test split; "
        "a component's share is what it would refer on its own, the gate's counts referred and rejected rows.\n",
        "### In-distribution test split: the gate's false positives\n",
        table(["kind", "not accepted", "support", "density", "epistemic"],
              [[label, *(_percent(summary[label]["gate"]["test"][k]) for k in RATES)] for label in labels]),
    ]
    for name, first in summary[labels[0]]["gate"]["ood"].items():
        out.append(f"### OOD set {name} ({first['rows']} rows)\n")
        rows = []
        for label in labels:
            entry = summary[label]["gate"]["ood"][name]
            rows.append([label, *(ms(entry["auroc"][c]) for c in RANKED),
                         _percent(entry["referred"]["gate"]), _percent(entry["referred"]["rejected"])])
        out.append(table(["kind", "AUROC support", "AUROC density", "AUROC epistemic", "AUROC gate",
                          "gate refers", "of which rejected"], rows))
    stress = summary[labels[0]]["gate"]["stress"]
    out.append("### Stress suite (generated from the test split)\n")
    out.append("Share of each stress set the gate does not accept (mean over seeds), per kind; the last columns "
               "give the AUROC of mutual information alone and of the gate for the low-rank kind, where MI "
               "saturates far from the data.\n")
    base = "lowrank" if "lowrank" in summary else labels[0]
    rows = []
    for name, first in stress.items():
        cells = [f"{100 * summary[label]['gate']['stress'][name]['referred']['gate']['mean']:.1f}%" for label in labels]
        entry = summary[base]["gate"]["stress"][name]
        rows.append([f"`{name}`", str(first["rows"]), *cells, f"{entry['auroc']['epistemic']['mean']:.3f}",
                     f"{entry['auroc']['gate']['mean']:.3f}"])
    out.append(table(["set", "rows", *labels, f"AUROC MI ({base})", f"AUROC gate ({base})"], rows))
    warned = {label: summary[label]["gate"]["warnings"] for label in labels if summary[label]["gate"]["warnings"]}
    if warned:
        out.append("Training's warnings (any seed):\n")
        out += [f"- **{label}**: " + "; ".join(w) + "\n" for label, w in warned.items()]
    return "\n".join(out)
