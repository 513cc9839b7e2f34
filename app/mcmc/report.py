"""``sbnn mcmc``'s result as markdown: convergence per kind and group, then the predictive against VI."""

from __future__ import annotations

from typing import Any

KINDS = (("nuts_lowrank", "NUTS, low rank"), ("nuts_fullrank", "NUTS, full rank"), ("vi", "VI, low rank (sbnn train)"))


def mcmc_markdown(result: dict[str, Any], command: str) -> str:
    plan = result["plan"]
    lines = [
        "# NUTS on the singular posterior",
        "",
        f"`{command}`: flchain, {result['rows']['train']} training rows, {result['rows']['test']} held out; one"
        f" hidden layer of {plan['hidden']} ReLU units at rank {plan['rank']}; {plan['chains']} chains of"
        f" {plan['warmup']} warm-up + {plan['samples']} draws (max tree depth {plan['max_tree_depth']}) per kind;"
        f" {result['seconds']:.0f} s in all.",
        "",
        "## Convergence (split R-hat and ESS over every element of each group)",
        "",
        "| kind | group | elements | R-hat median | R-hat max | ESS median | ESS min |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, name in KINDS[:2]:
        entry = result[key]
        for group, c in entry["convergence"].items():
            lines.append(
                f"| {name} | {group} | {c['n']:.0f} | {c['rhat_median']:.3f} | {c['rhat_max']:.3f} |"
                f" {c['ess_median']:.0f} | {c['ess_min']:.0f} |"
            )
    lines += [
        "",
        "Divergent transitions per chain: "
        + "; ".join(f"{name} {result[key]['divergences']}" for key, name in KINDS[:2])
        + ". Seconds: "
        + ", ".join(f"{name} {result[key]['seconds']:.0f}" for key, name in KINDS)
        + ".",
        "",
        "## The predictive: NUTS against VI",
        "",
        "| kind | NLL | ECE | accuracy | AUROC | " + " | ".join(f"OOD {s} MI / entropy" for s in _ood(result)) + " |",
        "|---|---|---|---|---|" + "---|" * len(_ood(result)),
    ]
    for key, name in KINDS:
        entry = result[key]
        t = entry["test"]
        ood = " | ".join(
            f"{entry['ood_auroc'][s]['mutual_information']:.3f} / {entry['ood_auroc'][s]['total_entropy']:.3f}"
            for s in _ood(result)
        )
        lines.append(f"| {name} | {t['nll']:.3f} | {t['ece']:.3f} | {t['accuracy']:.3f} | {t['auroc']:.3f} | {ood} |")
    return "\n".join(lines) + "\n"


def _ood(result: dict[str, Any]) -> list[str]:
    return sorted(result["vi"]["ood_auroc"])
