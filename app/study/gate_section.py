"""The comparison report's gate section: per kind, what each component and the combined gate catch.

From every run's ``metrics["gate"]`` (written by :func:`app.evaluate.evaluate.evaluate`): the in-distribution
test rates, and on each OOD and stress set the AUROC of each component and the share each refers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.evaluate.gate import RANKED, gate_findings
from app.study.tables import mean_std, ms, table

RATES = ("not_accepted", "support", "density", "epistemic")
COMPONENTS = ("support", "density", "epistemic")


def _sets(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = entries[0]
    return {
        name: {
            "rows": first[name]["rows"],
            "description": first[name].get("description", ""),
            "auroc": {c: mean_std([e[name]["auroc"][c] for e in entries]) for c in RANKED},
            "referred": {c: mean_std([e[name]["referred"][c] for e in entries]) for c in COMPONENTS},
            "not_accepted": mean_std([e[name]["not_accepted"] for e in entries]),
            "rejected": mean_std([e[name]["rejected"] for e in entries]),
        }
        for name in first
    }


def aggregate_gate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over one kind's seeds of its gate metrics."""
    gates = [r["metrics"]["gate"] for r in results]
    return {
        "target_fpr": gates[0]["target_fpr"],
        "test": {k: mean_std([g["test"][k] for g in gates]) for k in RATES},
        "ood": _sets([g["ood"] for g in gates]),
        "stress": _sets([g["stress"] for g in gates]),
        "findings": _findings([gate_findings(g["ood"]) for g in gates]),
    }


def _findings(per_seed: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Each (set, component, finding) with the number of seeds it held for and the range of its values."""
    grouped: dict[tuple[str, str, str], list[float]] = {}
    for findings in per_seed:
        for f in findings:
            grouped.setdefault((f["set"], f["component"], f["finding"]), []).append(f["value"])
    return [
        {
            "set": name,
            "component": component,
            "finding": finding,
            "seeds": len(values),
            "low": min(values),
            "high": max(values),
        }
        for (name, component, finding), values in sorted(grouped.items())
    ]


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
        table(
            ["kind", "not accepted", "support", "density", "epistemic"],
            [[label, *(_percent(summary[label]["gate"]["test"][k]) for k in RATES)] for label in labels],
        ),
    ]
    for name, first in summary[labels[0]]["gate"]["ood"].items():
        out.append(f"### OOD set {name} ({first['rows']} rows)\n")
        rows = []
        for label in labels:
            entry = summary[label]["gate"]["ood"][name]
            rows.append(
                [
                    label,
                    *(ms(entry["auroc"][c]) for c in RANKED),
                    _percent(entry["not_accepted"]),
                    _percent(entry["rejected"]),
                ]
            )
        out.append(
            table(
                [
                    "kind",
                    "AUROC support",
                    "AUROC density",
                    "AUROC epistemic",
                    "AUROC gate",
                    "gate refers",
                    "of which rejected",
                ],
                rows,
            )
        )
    stress = summary[labels[0]]["gate"]["stress"]
    out.append("### Stress suite (generated from the test split)\n")
    out.append(
        "Share of each stress set the gate does not accept (mean over seeds), per kind; the last columns "
        "give the AUROC (mean ± std over seeds) of mutual information alone and of the gate for the low-rank "
        "kind: MI saturates far from the data, and differently for each seed.\n"
    )
    base = "lowrank" if "lowrank" in summary else labels[0]
    rows = []
    for name, first in stress.items():
        cells = [f"{100 * summary[label]['gate']['stress'][name]['not_accepted']['mean']:.1f}%" for label in labels]
        entry = summary[base]["gate"]["stress"][name]
        rows.append(
            [f"`{name}`", str(first["rows"]), *cells, ms(entry["auroc"]["epistemic"]), ms(entry["auroc"]["gate"])]
        )
    out.append(table(["set", "rows", *labels, f"AUROC MI ({base})", f"AUROC gate ({base})"], rows))
    rows = []
    for label in labels:
        seeds = len(summary[label]["seeds"])
        for f in summary[label]["gate"]["findings"]:
            if f["finding"] == "below_chance":
                what, low, high = f"{f['component']} below chance (AUROC", f"{f['low']:.3f}", f"{f['high']:.3f}"
            else:
                what, low, high = "the gate refers under half (share", f"{f['low']:.1%}", f"{f['high']:.1%}"
            values = low if low == high else f"{low}–{high}"
            rows.append([label, f"`{f['set']}`", f"{what} {values})", f"{f['seeds']} of {seeds}"])
    if rows:
        out.append("Training's warnings, per kind: what the gate misses on the provided OOD sets.\n")
        out.append(table(["kind", "OOD set", "warning", "seeds"], rows, align="l"))
    return "\n".join(out)
