"""``docs/results.md`` from the numbers of ``results.json``: the claims, the tables of every section, the figures'
captions, and the hand-written observations, which survive a rewrite."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.evaluate.evaluate import ECE_BINS
from app.study.aggregate import OOD_METRICS, OOD_SCORES, REFERRAL_TABLE, TEST_METRICS
from app.study.design import ABLATION_BASE, EVALUATION_SEED
from app.study.gate_section import render_gate
from app.study.tables import ms, table

# The paper's clinical MLP (MIMIC-III, 44 inputs) for context: AUROC, NLL, OOD AUROC (MI), parameters.
PAPER: dict[str, tuple[float, float, float, int]] = {
    "deterministic": (0.922, 0.284, 0.500, 22_400),
    "ensemble": (0.929, 0.300, 0.738, 112_000),
    "fullrank": (0.895, 0.401, 0.770, 44_800),
    "lowrank": (0.895, 0.433, 0.802, 13_600),
    "rank1": (0.901, 0.317, 0.705, 23_300),
}
PAPER_ENERGY_AT_15 = 0.74
MARKS = {"holds": "✓", "does not hold": "✗", "cannot tell at this n": "?"}  # a claim's condition, by its verdict
OBSERVATIONS_START = "<!-- observations:start (kept when the report is rewritten) -->"
OBSERVATIONS_END = "<!-- observations:end -->"


def _threads(count: int) -> str:
    return f"{count} torch thread" + ("" if count == 1 else "s")


def kept_observations(path: Path) -> str:
    """The hand-written observations of the report at ``path``, kept when it is rewritten (a placeholder when none)."""
    if path.is_file():
        text = path.read_text()
        if OBSERVATIONS_START in text and OBSERVATIONS_END in text:
            return text.split(OBSERVATIONS_START, 1)[1].split(OBSERVATIONS_END, 1)[0].strip()
    return "_Not written yet: read the tables and figures, then write what they show here._"


def _paper_table(summary: Mapping[str, Any], labels: list[str]) -> str:
    """The paper's clinical MLP table beside ours, kind by kind: AUROC, NLL, OOD AUROC (MI), parameters; ours
    gives each OOD set's MI AUROC by its novelty figure (changed rows, else risk-matched)."""
    sets = list(summary[labels[0]]["ood"])

    def novelty(label: str, name: str) -> str:
        entry = summary[label]["ood"][name]
        if "changed_rows" in entry:
            return ms(entry["changed_rows"]["mutual_information"])
        if "risk_matched" in entry:
            return ms(entry["risk_matched"]["mutual_information"])
        return ms(entry["mutual_information"]["auroc"])

    rows = []
    for label in labels:
        paper, s = PAPER.get(label), summary[label]
        rows.append(
            [
                label,
                f"{paper[0]:.3f}" if paper else "",
                ms(s["test"]["auroc"]),
                f"{paper[1]:.3f}" if paper else "",
                ms(s["test"]["nll"]),
                f"{paper[2]:.3f}" if paper else "",
                *(novelty(label, name) for name in sets),
                f"{paper[3]:,}" if paper else "",
                f"{s['parameter_count']:,}",
            ]
        )
    headers = ["kind", "AUROC paper", "AUROC ours", "NLL paper", "NLL ours", "OOD MI paper (newborns)"]
    headers += [f"OOD MI ours ({name})" for name in sets] + ["params paper", "params ours"]
    return "\n".join(
        [
            "## The paper's table beside ours\n",
            "The paper's clinical MLP on MIMIC-III (44 inputs, 8.4% deaths; OOD: newborn ICU stays) and ours on "
            "flchain, kind by kind (mean ± std over seeds). Our OOD columns are each set's novelty figure: on "
            "the rows an altered set's alteration changed, risk-matched on the others (details under OOD "
            "detection).\n",
            table(headers, rows),
        ]
    )


def _novelty_tables(summary: Mapping[str, Any], labels: list[str], name: str) -> str:
    """What measures novelty on OOD set ``name`` (app.evaluate.novelty): its changed rows apart, and the
    risk-matched AUROCs (what a score adds beyond the predicted risk), per kind."""
    out = []
    first = summary[labels[0]]["ood"][name]
    if "changed_rows" in first:
        rows = [[label, *(ms(summary[label]["ood"][name]["changed_rows"][s]) for s in OOD_SCORES)] for label in labels]
        out.append(
            f"On the {first['changed_rows']['rows']} rows the alteration changed (the others are test rows, which "
            "every score ranks at chance):\n"
        )
        out.append(table(["kind", *(f"AUROC ({short})" for short in OOD_SCORES.values())], rows))
    if "risk_matched" in first:
        columns = [("risk", "risk"), ("risk_after_matching", "risk, matched"), ("mutual_information", "MI")]
        columns += [("total_entropy", "entropy"), ("predictive_std", "std"), ("matched_ood_share", "set matched")]
        present = [(k, h) for k, h in columns if k in first["risk_matched"]]
        rows = [[label, *(ms(summary[label]["ood"][name]["risk_matched"][k]) for k, _ in present)] for label in labels]
        out.append(
            "Risk-matched AUROCs: the test rows reweighted so that their predicted risk has this set's distribution "
            "(over its risk deciles); a score's AUROC there is what it adds beyond ranking risk, and the predicted "
            "risk's own AUROC after matching, near 0.5, checks the matching:\n"
        )
        out.append(table(["kind", *(h for _, h in present)], rows))
    return "\n".join(out)


def render_markdown(report: Mapping[str, Any], observations: str, figures: Mapping[str, str]) -> str:
    """``docs/results.md`` from the numbers of ``results.json``; ``figures`` maps a figure to its relative path."""
    summary = report["summary"]
    labels = list(summary)
    machine = report["machine"]
    plan = report["plan"]
    budget = report["budget"]
    data = report["data"]
    seeds = ", ".join(map(str, plan["seeds"]))
    out: list[str] = [
        f"# Comparison of the kinds on {data['name']} (`sbnn compare`)\n",
        f"Produced by `{report['command']}` on {report['date']} (UTC), resumable: it skips runs whose "
        f"`result.json` holds the same training config.\n",
        f"- **Machine**: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; training on "
        f"{report['training_device']} with {_threads(machine['torch_threads'])}.",
        f"- **Versions**: Python {machine['versions']['python']}, torch {machine['versions']['torch']}, numpy "
        f"{machine['versions']['numpy']}, sbnn {machine['versions']['sbnn']}.",
        f"- **Data**: `{data['source']}`: {data['population']} Split fixed (split seed {data['split_seed']}: "
        f"{data['rows']['train']} train / {data['rows']['val']} val / {data['rows']['test']} test rows); "
        f"OOD sets: " + ", ".join(f"{k} ({v} rows)" for k, v in data["ood_rows"].items()) + ".",
        f"- **Seeds**: {seeds} (training seed: initialisation, weight noise and batch order); mean ± sample std "
        f"over seeds.",
        f"- **Budget, the same for every kind**: at most {budget['epochs']} epochs, early "
        f"stopping on validation NLL with patience {budget['patience']}, batch {budget['batch_size']}, Adam lr "
        f"{budget['lr']}, β = {budget['beta']} annealed over {budget['kl_warmup_epochs']} epochs, hidden "
        f"{budget['hidden']}, validation NLL on {budget['val_samples']} samples, class weights "
        f"{budget['class_weight']}; test-time S = {budget['default_samples']} (deterministic 1, ensemble its "
        f"members). Every set is scored with the same weight-sample seed ({EVALUATION_SEED}).",
        "",
        "## The paper's claims\n",
        "Each comparison of low-rank with another kind is a paired bootstrap 95% interval over test rows and "
        "seeds (Δ = low-rank minus the other; the point estimate on every row and seed, then the interval). A "
        "condition is ✓ when its whole interval meets the rule, ✗ when its whole interval breaks it, ? when the "
        "interval spans the rule's bound (*cannot tell at this n*). A claim *holds* when every condition is ✓, "
        "*does not hold* when any is ✗, and otherwise *cannot tell at this n*. 'Similar' and 'comparable' are "
        "two-sided. OOD sets are judged on what measures novelty: an altered set on the rows its alteration "
        "changed, another set risk-matched (in-distribution rows reweighted to the set's predicted risk, "
        "`app/evaluate/novelty.py`). The paper's numbers come from MIMIC-III (44 inputs, 8.4% deaths); these come "
        "from a different, smaller clinical task.\n",
    ]
    claim_rows = [
        [
            c["statement"],
            c["rule"],
            "; ".join(MARKS[cond["verdict"]] + " " + cond["text"] for cond in c["conditions"])
            or "needs " + ", ".join(c["missing"]),
            f"**{c['verdict']}**",
        ]
        for c in report["claims"]
    ]
    out.append(table(["claim", "rule", "evidence", "verdict"], claim_rows, align="l"))

    out.append(_paper_table(summary, labels))
    out.append(f"## Test split ({summary[labels[0]]['test_rows']} rows)\n")
    rows = [[label, *(ms(summary[label]["test"][m]) for m in TEST_METRICS)] for label in labels]
    out.append(table(["kind", "AUROC", "AUPRC", "NLL", "ECE", "Brier", "accuracy"], rows))
    out.append(
        f"ECE: {ECE_BINS} equal-width bins of the predicted risk. Paper (MIMIC-III) for context: "
        + "; ".join(f"{k} AUROC {v[0]:.3f}, NLL {v[1]:.3f}" for k, v in PAPER.items())
        + ".\n"
    )

    out.append("## Size and speed\n")
    base = summary.get(ABLATION_BASE, {}).get("parameter_count")
    rows = []
    for label in labels:
        s = summary[label]
        timing = report["timing"].get(label, {})
        paper = PAPER.get(label)
        rows.append(
            [
                label,
                f"{s['parameter_count']:,}",
                f"{s['parameter_count'] / base:.2f}×" if base else "",
                f"{paper[3]:,}" if paper else "",
                ms(s["training_seconds"], 1),
                ms(s["epochs_run"], 0),
                ms(s["seconds_per_epoch"], 2),
                str(s["default_samples"]),
                ms(timing["rows_1"], 2) if timing else "",
                ms(timing["seeded_rows_1"], 2) if timing else "",
                ms(timing["rows_1024"], 1) if timing else "",
            ]
        )
    out.append(
        table(
            [
                "kind",
                "parameters",
                "× lowrank",
                "paper",
                "training (s)",
                "epochs",
                "s / epoch",
                "S",
                "1 row, bank (ms)",
                "1 row, seeded (ms)",
                "1024 rows, bank (ms)",
            ],
            rows,
        )
    )
    load = report["timing_load_average"]
    out.append(
        f"Parameters count variational means and scales (as the paper does). Training time: wall clock of "
        f"the training loop (early stopping decides the epochs). Inference: the serving engine "
        f"(`app.bnn.engine.MonteCarloEngine`) at the default S: an unseeded request (the frozen bank) and a "
        f"seeded one (fresh or local weight samples, as its cost model chooses), median of "
        f"{plan['timing_repeats']} calls after a warm-up, measured after all "
        f"training with {_threads(machine['torch_threads'])}, mean ± std over seeds; the 1-minute load "
        f"average was {load[0]:.1f} → {load[1]:.1f} on {machine['cores']} cores while timing; timings on a "
        "shared machine can move by up to 2× between runs.\n"
    )

    out.append("## OOD detection\n")
    out.append(
        "Each OOD set is pooled with the in-distribution test split (OOD = positive). Scores: mutual "
        "information (MI, the paper's) and the predictive std of the predicted class (std). "
        "'Not accepted' is the share of the set the model's layered gate refers or rejects (next "
        "section). "
        "A deterministic network has MI = std = 0 everywhere: its AUROC is 0.5 by construction.\n"
    )
    for name in summary[labels[0]]["ood"]:
        rows_ood = summary[labels[0]]["ood"][name]["rows"]
        out.append(f"### {name} ({rows_ood} rows)\n\n{data['ood_reasons'].get(name, '')}\n")
        rows = []
        for label in labels:
            entry = summary[label]["ood"][name]
            rows.append(
                [
                    label,
                    *(ms(entry["mutual_information"][m]) for m in OOD_METRICS),
                    ms(entry["not_accepted_rate"]),
                    *(ms(entry["predictive_std"][m]) for m in OOD_METRICS),
                ]
            )
        out.append(
            table(
                [
                    "kind",
                    "AUROC (MI)",
                    "AUPR-OOD (MI)",
                    "AUPR-In (MI)",
                    "FPR@95%TPR (MI)",
                    "not accepted",
                    "AUROC (std)",
                    "AUPR-OOD (std)",
                    "AUPR-In (std)",
                    "FPR@95%TPR (std)",
                ],
                rows,
            )
        )
        out.append(_novelty_tables(summary, labels, name))

    out.append(render_gate(summary))

    out.append("## Calibration and selective prediction\n")
    out.append(f"![reliability diagrams]({figures['reliability']})\n")
    out.append("Reliability diagrams of the test split, predictions of all seeds pooled (grey: cases per bin).\n")
    out.append(f"![risk–coverage curves]({figures['risk_coverage']})\n")
    out.append(
        "Risk–coverage: refer the most uncertain cases first (by MI, or by the total predictive entropy) "
        "and measure the error rate (arg-max class) of the cases kept; mean ± std over seeds.\n"
    )
    referral = [(score, f) for score in ("mutual_information", "total") for f in REFERRAL_TABLE if f > 0]
    header = ["kind", "error, none referred"] + [
        f"{f:.0%} referred by {'MI' if score == 'mutual_information' else 'entropy'}" for score, f in referral
    ]
    rows = []
    for label in labels:
        curve = report["risk_coverage"][label]
        rows.append([label, ms(curve["total"]["0.0"]), *(ms(curve[score][str(f)]) for score, f in referral)])
    out.append(table(header, rows))

    out.append("## OOD score distributions\n")
    out.append(f"![OOD score histograms]({figures['ood_histograms']})\n")
    out.append(
        "Mutual information on the in-distribution test split and on each OOD set (log scale), for the "
        "served (best validation NLL) seed of each kind; dashed: its gate.\n"
    )

    if report["ablation"]:
        out.append("## Rank ablation (lowrank, rank r in the hidden layers, 1 at the output)\n")
        sets = list(report["ablation"][0]["ood"])
        rows = []
        for row in report["ablation"]:
            rows.append(
                [
                    str(row["rank"]),
                    "/".join(map(str, row["ranks"])),
                    f"{row['parameter_count']:,}",
                    ms(row["test"]["auroc"]),
                    ms(row["test"]["nll"]),
                    ms(row["test"]["ece"]),
                    *(ms(row["ood"][s]["mutual_information"]["auroc"]) for s in sets),
                    ms(row["ood_auroc_mean_over_sets"]),
                ]
            )
        out.append(
            table(
                [
                    "r",
                    "layer ranks",
                    "parameters",
                    "AUROC",
                    "NLL",
                    "ECE",
                    *(f"OOD AUROC (MI) {s}" for s in sets),
                    "OOD AUROC mean",
                ],
                rows,
            )
        )
        ablation_seeds = ", ".join(map(str, plan["ablation_seeds"]))
        out.append(
            f"Seeds {ablation_seeds}; the row of lowrank's own rank reuses the comparison's lowrank runs. "
            "A rank is capped at min(m, n) of its layer (layer ranks: input / hidden / output).\n"
        )
        out.append(f"![rank ablation]({figures['rank_ablation']})\n")
        energy = report["energy"]
        if energy:
            ranks = list(plan["ablation_ranks"])
            rows = []
            for layer, curve in energy.items():
                cells = []
                for r in ranks:
                    index = min(r, len(curve["mean"])) - 1
                    cells.append(f"{curve['mean'][index]:.1%}")
                rows.append([layer, *cells])
            out.append(
                "Singular-value energy Σ_{i≤r} σ_i² / Σ σ_i² of the trained deterministic networks' "
                f"hidden layers (mean over seeds {seeds}; the paper: {PAPER_ENERGY_AT_15:.0%} at r = 15):\n"
            )
            out.append(table(["layer", *(f"r = {r}" for r in ranks)], rows))

    out.append("## PAC-Bayes bound\n")
    out.append(
        "The McAllester bound (`app.evaluate.bound`) of the served lowrank and fullrank models, with the "
        "deterministic run of the same seed as twin for the Eckart–Young terms.\n"
    )
    out.append(report["bound_markdown"])

    out.append("## Served models\n")
    out.append(
        "The best seed of each kind (lowest validation NLL) is saved under `models/` and served by "
        "`sbnn serve` through the same interface; the manifest's `kind` names the kind.\n"
    )
    rows = [
        [f"`{e['folder']}`", e["kind"], str(e["seed"]), f"{e['best_val_nll']:.4f}", f"{e['bytes'] / 1e3:.0f} KB"]
        for e in report["models"].values()
    ]
    out.append(table(["model", "kind", "seed", "val NLL", "size"], rows, align="l"))

    out.append("## Observations\n")
    out.append(f"{OBSERVATIONS_START}\n{observations}\n{OBSERVATIONS_END}\n")
    out.append("## Reproduce\n")
    out.append(f"```bash\npip install -e '.[data,train]'\n{report['command']}\n```\n")
    out.append(
        f"Runs (checkpoints, `result.json`, `scores.npz`) go to `{report['out']}/<kind>-s<seed>/`; every "
        "number above is also in `results.json` beside this file's figures.\n"
    )
    return "\n".join(out)
