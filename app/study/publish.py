"""Publishing a finished comparison: ``docs/results.md``, its figures and ``results.json``, and the served
model of each kind (the best seed, copied to ``models/`` and evaluated there).

Everything is computed from the runs' ``result.json`` and ``scores.npz`` (see :mod:`app.study.runs`), except
inference times, which are measured here, after all training, so that training does not disturb them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.checkpoint.manifest import MANIFEST_FILE
from app.data.dataset import TabularDataset
from app.errors import SbnnError
from app.evaluate.evaluate import ECE_BINS
from app.study.aggregate import (
    REFERRED,
    aggregate_ablation,
    aggregate_risk_coverage,
    aggregate_runs,
    mean_ood_auroc,
)
from app.study.bundle import best_run, bundled_entry, copy_checkpoint
from app.study.claims import Evidence, assess_claims
from app.study.design import ABLATION_BASE, EVALUATION_SEED, StudyPlan
from app.study.measure import load_average, machine_info, singular_value_energy, time_inference
from app.study.report import PAPER_ENERGY_AT_15, kept_observations, render_markdown
from app.study.runs import keep_records, load_result, load_results, load_scores
from app.study.tables import mean_std

# Each figure's path, relative to the docs folder (the report links them so).
FIGURES = {
    "reliability": "results/reliability.png",
    "risk_coverage": "results/risk_coverage.png",
    "ood_histograms": "results/ood_scores.png",
    "rank_ablation": "results/rank_ablation.png",
}


def write_results(
    plan: StudyPlan,
    dataset: TabularDataset,
    out: str | Path,
    docs: str | Path,
    models: str | Path | None,
    command: str,
    ablation: bool = True,
) -> dict[str, Any]:
    """Aggregate the finished runs of ``plan`` under ``out``: write ``docs/results.md``, the figures and
    ``results.json`` under ``docs/results/``, keep every run's records (``result.json``, ``scores.npz``) under
    ``docs/results/runs/<out's name>/``, and copy the best seed of each kind to ``models/<data>-<label>``
    (unless ``models`` is None). Returns the numbers written to ``results.json``."""
    from app.study.plots import write_ood_histogram_grid, write_reliability_grid, write_risk_coverage

    out, docs = Path(out), Path(docs)
    figures_dir = docs / "results"
    figures_dir.mkdir(parents=True, exist_ok=True)
    comparison = plan.comparison_runs(out)
    grouped = load_results(comparison)
    labels = [v.label for v in plan.variants]
    summary = {label: aggregate_runs(grouped[label]) for label in labels}
    folders = {label: [r.folder for r in comparison if r.label == label] for label in labels}

    # Inference times after all training, each run in turn.
    load_before = load_average()
    timing: dict[str, dict[str, Any]] = {}
    for label in labels:
        per_run = [time_inference(folder, dataset, plan.timing_repeats) for folder in folders[label]]
        timing[label] = {key: mean_std([t[key] * 1e3 for t in per_run]) for key in per_run[0]}  # milliseconds
    timing_load = (load_before, load_average())

    best = {label: best_run(folders[label]) for label in labels}
    scores = {label: [load_scores(folder) for folder in folders[label]] for label in labels}
    curves, risk_table = aggregate_risk_coverage(scores)

    changed = {name: split.changed_rows for name, split in dataset.ood.items()}
    parameters = {label: int(summary[label]["parameter_count"]) for label in labels}
    claims = assess_claims(Evidence(parameters, scores, changed, plan.bootstrap_resamples))
    ablation_rows = aggregate_ablation(plan, out) if ablation and plan.ablation_ranks and plan.ablation_seeds else []
    energy = singular_value_energy(folders["deterministic"]) if "deterministic" in folders else {}

    # Figures.
    pooled = {
        label: (
            np.concatenate([s["test_y"] for s in scores[label]]),
            np.concatenate([s["test_probs"] for s in scores[label]]),
        )
        for label in labels
    }
    seeds_note = f"seeds {', '.join(map(str, plan.seeds))}"
    write_reliability_grid(
        docs / FIGURES["reliability"],
        pooled,
        ECE_BINS,
        note=f"{dataset.name} test split, predictions of {seeds_note} pooled",
    )
    write_risk_coverage(
        docs / FIGURES["risk_coverage"],
        REFERRED,
        curves,
        note=f"{dataset.name} test split, mean ± std over {seeds_note}",
    )
    histograms = {}
    for label in labels:
        best_scores = load_scores(best[label])
        ood = {k.split("__", 1)[1]: v for k, v in best_scores.items() if k.startswith("ood_mi__")}
        threshold = load_result(best[label])["epistemic_threshold"]  # type: ignore[index]
        histograms[f"{label} ({best[label].name})"] = (best_scores["test_mi"], ood, threshold)
    write_ood_histogram_grid(
        docs / FIGURES["ood_histograms"],
        histograms,
        note="the served (best validation NLL) seed of each kind; dashed: its OOD gate",
    )
    if ablation_rows:
        _write_rank_ablation(docs / FIGURES["rank_ablation"], summary, grouped, ablation_rows, energy)

    exported = {}
    if models is not None:
        for label in labels:
            exported[label] = _export_model(best[label], Path(models) / f"{dataset.name}-{label}", dataset)

    bound_markdown, bound_numbers = _bound_sections(best, out, dataset)
    budget_config = comparison[0].config
    provenance = dataset.provenance
    report: dict[str, Any] = {
        "command": command,
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": machine_info(),
        "training_device": grouped[labels[0]][0]["training"]["device"],
        "out": str(out),
        "data": {
            "name": dataset.name,
            "source": provenance.source,
            "population": provenance.population,
            "split_seed": provenance.split_seed,
            "rows": {k: v for k, v in provenance.rows.items() if not k.startswith("ood:")},
            "ood_rows": {k.split(":", 1)[1]: v for k, v in provenance.rows.items() if k.startswith("ood:")},
            "ood_reasons": dict(provenance.ood_sets),
        },
        "plan": {
            "seeds": list(plan.seeds),
            "ablation_seeds": list(plan.ablation_seeds),
            "ablation_ranks": list(plan.ablation_ranks),
            "variants": {
                v.label: {
                    "overrides": {k: getattr(x, "value", x) for k, x in v.overrides.items()},
                    "warm_start_from": v.warm_start_from,
                    "description": v.description,
                }
                for v in plan.variants
            },
            "timing_repeats": plan.timing_repeats,
        },
        "budget": budget_config.model_dump(
            mode="json",
            include={
                "epochs",
                "patience",
                "batch_size",
                "lr",
                "beta",
                "kl_warmup_epochs",
                "hidden",
                "val_samples",
                "default_samples",
                "class_weight",
            },
        ),
        "summary": summary,
        "timing": timing,
        "timing_load_average": timing_load,
        "risk_coverage": risk_table,
        "claims": [c.as_dict() for c in claims],
        "ablation": ablation_rows,
        "energy": energy,
        "best": {label: folder.name for label, folder in best.items()},
        "models": exported,
        "bound": bound_numbers,
        "bound_markdown": bound_markdown,
        "runs": {
            run.name: {
                k: v for k, v in result.items() if k in ("label", "seed", "parameter_count", "training", "wall_seconds")
            }
            for run in plan.runs(out, ablation=ablation)
            if (result := load_result(run.folder)) is not None
        },
    }
    (figures_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    keep_records(plan.runs(out, ablation=ablation), figures_dir / "runs" / out.name)  # per-seed metrics, kept
    markdown_path = docs / "results.md"
    markdown = render_markdown(report, kept_observations(markdown_path), FIGURES)
    markdown_path.write_text(markdown)
    return report


def _write_rank_ablation(
    path: Path,
    summary: Mapping[str, Mapping[str, Any]],
    grouped: Mapping[str, Sequence[Mapping[str, Any]]],
    ablation_rows: Sequence[Mapping[str, Any]],
    energy: Mapping[str, Mapping[str, list[float]]],
) -> None:
    """The ablation figure: test and OOD AUROC of each rank beside the other kinds (not lowrank-svd, a lowrank
    variant), and the singular-value energy of the deterministic networks."""
    from app.study.plots import ParetoPoint, write_rank_ablation

    others = [label for label in summary if label != ABLATION_BASE and label != "lowrank-svd"]
    auroc_points = [
        ParetoPoint(
            f"r={row['rank']}",
            row["parameter_count"],
            row["test"]["auroc"]["mean"],
            row["test"]["auroc"]["std"],
            True,
        )
        for row in ablation_rows
    ]
    ood_points = [
        ParetoPoint(
            f"r={row['rank']}",
            row["parameter_count"],
            row["ood_auroc_mean_over_sets"]["mean"],
            row["ood_auroc_mean_over_sets"]["std"],
            True,
        )
        for row in ablation_rows
    ]
    for label in others:
        s = summary[label]
        auroc_points.append(
            ParetoPoint(label, s["parameter_count"], s["test"]["auroc"]["mean"], s["test"]["auroc"]["std"], False)
        )
        ood_auroc = mean_std([mean_ood_auroc(r) for r in grouped[label]])
        ood_points.append(ParetoPoint(label, s["parameter_count"], ood_auroc["mean"], ood_auroc["std"], False))
    energy_curves = {
        layer: (np.array(c["ranks"]), np.array(c["mean"]), np.array(c["std"])) for layer, c in energy.items()
    }
    write_rank_ablation(
        path,
        auroc_points,
        ood_points,
        energy_curves,
        marked_rank=15,
        paper_energy=PAPER_ENERGY_AT_15,
    )


def _export_model(source: Path, target: Path, dataset: TabularDataset) -> dict[str, Any]:
    """Copy a run's checkpoint to ``target`` (:func:`app.study.bundle.copy_checkpoint`) and evaluate it there,
    so its metrics.json, card.md and figures are its own."""
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.evaluate import evaluate, score_sets, write_evaluation

    manifest = copy_checkpoint(source, target)
    checkpoint = load_checkpoint(target)
    scored = score_sets(checkpoint, dataset, seed=EVALUATION_SEED)
    result = evaluate(checkpoint, dataset, scored=scored)
    write_evaluation(checkpoint, dataset, result, figures=True, scored=scored)
    return bundled_entry(source, target, manifest)


def _bound_sections(best: Mapping[str, Path], out: Path, dataset: TabularDataset) -> tuple[str, dict[str, Any]]:
    """PAC-Bayes bound sections of the best lowrank and fullrank models, the deterministic run of the same seed
    as twin."""
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.bound import bound_report
    from app.evaluate.bound_markdown import render_bound_markdown

    parts, numbers = [], {}
    for label in ("lowrank", "fullrank"):
        if label not in best:
            continue
        checkpoint = load_checkpoint(best[label])
        twin_folder = out / f"deterministic-s{checkpoint.manifest.training.seed}"
        twin = load_checkpoint(twin_folder) if (twin_folder / MANIFEST_FILE).is_file() else None
        heading = f"### {label}: `{best[label].name}`, deterministic twin `{twin_folder.name if twin else 'none'}`"
        try:
            report = bound_report(checkpoint, dataset, twin=twin)
        except SbnnError as exc:  # a refusal is reported, not fatal: the rest of the report stands
            parts.append(f"{heading}\n\nNot computed: {exc}\n")
            continue
        rendered = render_bound_markdown(report).strip().splitlines()
        if rendered and rendered[0].startswith("#"):  # its own title ("PAC-Bayes bound …"): ours stands for it
            rendered = rendered[1:]
        parts.append(heading + "\n" + "\n".join(rendered) + "\n")
        numbers[label] = report.as_dict()
    return "\n".join(parts) or "No lowrank or fullrank run to bound.\n", numbers


def command_line() -> str:
    """The command as typed (``sbnn compare ...``), for the report's header."""
    return " ".join(["sbnn", *sys.argv[1:]]) if Path(sys.argv[0]).name == "sbnn" else " ".join(sys.argv)
