"""Aggregate a comparison (`sbnn compare`) into ``docs/results.md``, its figures, ``results.json`` and the served
models of each kind.

Everything is computed from the runs' ``result.json`` and ``scores.npz`` (see :mod:`app.evaluate.compare`),
except inference times, which are measured here, after all training, so that training does not disturb them.
The paper's claims are judged by rules stated next to each verdict (:func:`assess_claims`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.checkpoint.manifest import MANIFEST_FILE, WEIGHTS_FILE
from app.data.dataset import TabularDataset
from app.errors import SbnnError
from app.evaluate.compare import ABLATION_BASE, EVALUATION_SEED, SCORES_FILE, Plan, RunSpec, load_result
from app.evaluate.results_gate import render_gate, summarise_gate
from app.evaluate.tables import mean_std, ms, table

# Rules of the claims; the report states each one next to its verdict.
SIMILAR_AUROC = 0.02  # "similar AUROC": low-rank's mean at most this far below the other kind's
COMPARABLE_ECE = 0.02  # "calibration comparable": mean ECEs within this of each other
ABOUT = 0.8  # "about k× fewer parameters": a ratio of at least 0.8·k
NO_GAIN = 0.02  # "no consistent gain": warm start better by at most this in AUROC and in NLL

TEST_METRICS = ("auroc", "auprc", "nll", "ece", "brier", "accuracy")
OOD_METRICS = ("auroc", "aupr_ood", "aupr_in", "fpr_at_95_tpr")
OOD_SCORES = {"mutual_information": "MI", "predictive_std": "std"}
REFERRED = np.round(np.linspace(0.0, 0.9, 91), 2)  # fractions of cases referred in the risk–coverage curves
REFERRAL_TABLE = (0.0, 0.1, 0.3)
TIMING_ROWS = (1, 1024)
ECE_BINS = 10

# The paper's clinical MLP (MIMIC-III, 44 inputs) for context: AUROC, NLL, OOD AUROC (MI), parameters.
PAPER: dict[str, tuple[float, float, float, int]] = {
    "deterministic": (0.922, 0.284, 0.500, 22_400),
    "ensemble": (0.929, 0.300, 0.738, 112_000),
    "fullrank": (0.895, 0.401, 0.770, 44_800),
    "lowrank": (0.895, 0.433, 0.802, 13_600),
    "rank1": (0.901, 0.317, 0.705, 23_300),
}
PAPER_ENERGY_AT_15 = 0.74
OBSERVATIONS_START = "<!-- observations:start (kept when the report is rewritten) -->"
OBSERVATIONS_END = "<!-- observations:end -->"


# --------------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------------


class Verdict(str, Enum):
    HOLDS = "holds"
    IN_PART = "holds in part"
    DOES_NOT_HOLD = "does not hold"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Condition:
    """One checkable part of a claim, in words with its numbers, and whether the numbers meet the rule."""

    text: str
    holds: bool


def verdict(conditions: Sequence[Condition]) -> Verdict:
    """Holds when every condition does, in part when some do, not when none does (not tested when empty)."""
    if not conditions:
        return Verdict.NOT_TESTED
    met = sum(c.holds for c in conditions)
    if met == len(conditions):
        return Verdict.HOLDS
    return Verdict.IN_PART if met else Verdict.DOES_NOT_HOLD


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, the rule it is judged by, and the evidence (conditions) from this comparison."""

    statement: str
    rule: str
    conditions: tuple[Condition, ...]
    missing: tuple[str, ...] = ()  # kinds the claim needs that the comparison lacks

    @property
    def verdict(self) -> Verdict:
        return Verdict.NOT_TESTED if self.missing else verdict(self.conditions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "statement": self.statement,
            "rule": self.rule,
            "verdict": self.verdict.value,
            "conditions": [{"text": c.text, "holds": c.holds} for c in self.conditions],
            "missing": list(self.missing),
        }


def _lacking(summary: Mapping[str, Any], *labels: str) -> tuple[str, ...]:
    return tuple(label for label in labels if label not in summary)


def _test(summary: Mapping[str, Any], label: str, metric: str) -> float:
    return float(summary[label]["test"][metric]["mean"])


def _fewer_parameters(summary: Mapping[str, Any], other: str, name: str, factor: int) -> Claim:
    statement = f"About {factor}× fewer parameters than {name} at similar AUROC"
    rule = (
        f"{other} / lowrank parameters ≥ {ABOUT * factor:.1f}; lowrank's mean test AUROC at most "
        f"{SIMILAR_AUROC} below {other}'s"
    )
    if missing := _lacking(summary, ABLATION_BASE, other):
        return Claim(statement, rule, (), missing)
    low, high = summary[ABLATION_BASE]["parameter_count"], summary[other]["parameter_count"]
    ratio = high / low
    auroc_low, auroc_other = _test(summary, ABLATION_BASE, "auroc"), _test(summary, other, "auroc")
    delta = auroc_low - auroc_other
    return Claim(
        statement,
        rule,
        (
            Condition(f"{ratio:.1f}× fewer parameters ({low:,} vs {high:,})", ratio >= ABOUT * factor),
            Condition(f"AUROC {auroc_low:.3f} vs {auroc_other:.3f} (Δ {delta:+.3f})", delta >= -SIMILAR_AUROC),
        ),
    )


def _better_ood(summary: Mapping[str, Any]) -> Claim:
    statement = "Better OOD AUROC (mutual information) than full-rank BBB and the ensemble"
    rule = "lowrank's mean OOD AUROC (MI) above each of theirs, on every OOD set"
    if missing := _lacking(summary, ABLATION_BASE, "fullrank", "ensemble"):
        return Claim(statement, rule, (), missing)
    conditions = []
    for name, entry in summary[ABLATION_BASE]["ood"].items():
        low = entry["mutual_information"]["auroc"]["mean"]
        for other in ("fullrank", "ensemble"):
            value = summary[other]["ood"][name]["mutual_information"]["auroc"]["mean"]
            conditions.append(Condition(f"{name}: {low:.3f} vs {other} {value:.3f}", low > value))
    return Claim(statement, rule, tuple(conditions))


def _comparable_calibration(summary: Mapping[str, Any]) -> Claim:
    statement = "Calibration comparable to the other kinds"
    others = [label for label in ("fullrank", "ensemble", "deterministic") if label in summary]
    rule = f"mean ECE of lowrank within {COMPARABLE_ECE} of each of {', '.join(others) or 'fullrank, ensemble'}"
    if ABLATION_BASE not in summary or not others:
        return Claim(statement, rule, (), _lacking(summary, ABLATION_BASE) or ("fullrank", "ensemble"))
    low = _test(summary, ABLATION_BASE, "ece")
    return Claim(
        statement,
        rule,
        tuple(
            Condition(
                f"ECE {low:.3f} vs {other} {_test(summary, other, 'ece'):.3f}",
                abs(low - _test(summary, other, "ece")) <= COMPARABLE_ECE,
            )
            for other in others
        ),
    )


def _warm_start_no_gain(summary: Mapping[str, Any]) -> Claim:
    statement = "The SVD warm start brings no consistent gain (the paper's finding)"
    rule = f"lowrank-svd better than lowrank by at most {NO_GAIN} in mean AUROC and at most {NO_GAIN} in mean NLL"
    if missing := _lacking(summary, ABLATION_BASE, "lowrank-svd"):
        return Claim(statement, rule, (), missing)
    auroc_gain = _test(summary, "lowrank-svd", "auroc") - _test(summary, ABLATION_BASE, "auroc")
    nll_gain = _test(summary, ABLATION_BASE, "nll") - _test(summary, "lowrank-svd", "nll")
    return Claim(
        statement,
        rule,
        (
            Condition(f"AUROC gain {auroc_gain:+.3f}", auroc_gain <= NO_GAIN),
            Condition(f"NLL gain {nll_gain:+.3f}", nll_gain <= NO_GAIN),
        ),
    )


def assess_claims(summary: Mapping[str, Any]) -> list[Claim]:
    """The paper's claims judged on ``summary`` (per label: ``parameter_count``, ``test[metric]["mean"]``,
    ``ood[set]["mutual_information"]["auroc"]["mean"]``), each with its rule and evidence."""
    return [
        _fewer_parameters(summary, "fullrank", "full-rank BBB", 3),
        _fewer_parameters(summary, "ensemble", "a 5-member deep ensemble", 8),
        _better_ood(summary),
        _comparable_calibration(summary),
        _warm_start_no_gain(summary),
    ]


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def summarise(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of one label's results: test metrics, OOD metrics per set and score, training."""
    first = results[0]
    ood: dict[str, Any] = {}
    for name in first["metrics"]["ood"]:
        entries = [r["metrics"]["ood"][name] for r in results]
        ood[name] = {score: {m: mean_std([e[score][m] for e in entries]) for m in OOD_METRICS} for score in OOD_SCORES}
        ood[name]["not_accepted_rate"] = mean_std([e["not_accepted_rate"] for e in entries])
        ood[name]["rows"] = entries[0]["mutual_information"]["n_ood"]
    return {
        "kind": first["kind"],
        "seeds": [r["seed"] for r in results],
        "parameter_count": first["parameter_count"],
        "ranks": first["ranks"],
        "default_samples": first["default_samples"],
        "test": {m: mean_std([r["metrics"]["test"][m] for r in results]) for m in TEST_METRICS},
        "test_rows": first["metrics"]["test"]["n"],
        "ood": ood,
        "training_seconds": mean_std([r["training"]["duration_seconds"] for r in results]),
        "epochs_run": mean_std([r["training"]["epochs_run"] for r in results]),
        "seconds_per_epoch": mean_std(
            [r["training"]["duration_seconds"] / r["training"]["epochs_run"] for r in results]
        ),
        "best_val_nll": mean_std([r["training"]["best_val_nll"] for r in results]),
        "gate": summarise_gate(results),
    }


def _results(runs: Sequence[RunSpec]) -> dict[str, list[dict[str, Any]]]:
    """Finished results grouped by label, in seed order; a missing one is an error (run `sbnn compare`)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        result = load_result(run.folder)
        if result is None:
            raise FileNotFoundError(f"{run.folder}: no result.json; run the comparison (sbnn compare) first")
        grouped.setdefault(run.label, []).append(result)
    return grouped


def _scores(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / SCORES_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def risk_coverage(labels: np.ndarray, probs: np.ndarray, score: np.ndarray, referred: np.ndarray) -> np.ndarray:
    """Error rate of the cases kept when the ``referred`` fractions (F,) with the highest ``score`` (N,) are
    referred; labels (N,), probs (N, C) -> (F,). Rows tied on the score are referred at random, so a group
    cut part-way counts its expected errors (a constant score, as a deterministic network's MI, gives a
    flat curve at the overall error rate)."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ordered = np.asarray(score, dtype=np.float64)[order]
    wrong = (np.asarray(probs).argmax(1) != np.asarray(labels))[order].astype(np.float64)
    rows = wrong.size
    errors_before = np.r_[0.0, np.cumsum(wrong)]  # errors among the first k rows, k = 0..N
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]  # first row of each tie group
    ends = np.r_[starts[1:], rows]
    group = np.repeat(np.arange(starts.size), ends - starts)  # (N,) tie group of each sorted row
    cut = np.minimum(np.round(np.asarray(referred) * rows).astype(int), rows - 1)  # rows referred, keep ≥ 1
    first, last = starts[group[cut]], ends[group[cut]]
    group_errors = errors_before[last] - errors_before[first]
    referred_errors = errors_before[first] + (cut - first) / (last - first) * group_errors
    return (errors_before[-1] - referred_errors) / (rows - cut)


def singular_value_energy(folders: Sequence[Path]) -> dict[str, dict[str, list[float]]]:
    """Share of Σσ² in the top r singular values of each hidden layer's weight, r = 1..min(m, n), for trained
    deterministic checkpoints (mean and std over them), keyed "n→m"."""
    from app.checkpoint.io import load_checkpoint

    curves: dict[str, list[np.ndarray]] = {}
    for folder in folders:
        model = load_checkpoint(folder).model
        for layer in list(model.layers)[:-1]:  # the output layer (m = 1) has a single singular value
            sigma = torch.linalg.svdvals(layer.weight[0].detach().double()).numpy()
            energy = np.cumsum(sigma**2) / np.sum(sigma**2)
            curves.setdefault(f"{layer.in_features}→{layer.out_features}", []).append(energy)
    out = {}
    for layer, energies in curves.items():
        stacked = np.stack(energies)
        out[layer] = {
            "ranks": list(range(1, stacked.shape[1] + 1)),
            "mean": stacked.mean(0).tolist(),
            "std": (stacked.std(0, ddof=1) if len(energies) > 1 else np.zeros(stacked.shape[1])).tolist(),
        }
    return out


def time_inference(folder: Path, dataset: TabularDataset, repeats: int) -> dict[str, float]:
    """Median seconds of one call of the serving engine at the checkpoint's default S, after one warm-up call
    (test rows, repeated to fill the batch; CPU, the process's torch threads): ``rows_<N>`` for an unseeded
    request (the frozen bank), ``seeded_rows_1`` for a seeded one-row request (fresh or local, as the engine's
    cost model chooses)."""
    from app.bnn.engine import MonteCarloEngine, Sampler
    from app.checkpoint.io import load_checkpoint

    checkpoint = load_checkpoint(folder)
    x = torch.as_tensor(checkpoint.manifest.preprocessing.transform(dataset.test.frame))
    samples = checkpoint.model.num_samples(checkpoint.manifest.default_samples)
    engine = MonteCarloEngine(checkpoint.model, bank_size=samples, bank_seed=0)
    calls = {f"rows_{rows}": (rows, None, Sampler.BANK) for rows in TIMING_ROWS}
    calls["seeded_rows_1"] = (1, 5, Sampler.AUTO)
    timings = {}
    for key, (rows, seed, sampler) in calls.items():
        batch = x[torch.arange(rows) % x.shape[0]]  # (rows, d)
        engine.run(batch, samples, seed, sampler)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.run(batch, samples, seed, sampler)
            seconds.append(time.perf_counter() - started)
        timings[key] = statistics.median(seconds)
    return timings


def _load_average() -> float:
    """The 1-minute load average (NaN where the platform has none): how busy the machine was while timing."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        versions["sbnn"] = metadata.version("sbnn")
    except metadata.PackageNotFoundError:
        versions["sbnn"] = "0+unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def _mean_ood_auroc(result: Mapping[str, Any]) -> float:
    """A run's OOD AUROC (mutual information) averaged over its OOD sets."""
    return float(np.mean([entry["mutual_information"]["auroc"] for entry in result["metrics"]["ood"].values()]))


def _ablation(plan: Plan, out: Path) -> list[dict[str, Any]]:
    rows = []
    points = plan.ablation_points(out)
    for rank in plan.ablation_ranks:
        folders = [p.run.folder for p in points if p.rank == rank]
        results = []
        for folder in folders:
            result = load_result(folder)
            if result is None:
                raise FileNotFoundError(f"{folder}: no result.json; run the comparison (sbnn compare) first")
            results.append(result)
        summary = summarise(results)
        per_seed_ood = [_mean_ood_auroc(r) for r in results]
        rows.append(
            {
                "rank": rank,
                "runs": [f.name for f in folders],
                **summary,
                "ood_auroc_mean_over_sets": mean_std(per_seed_ood),
            }
        )
    return rows


def _export_model(source: Path, target: Path, dataset: TabularDataset) -> dict[str, Any]:
    """Copy a run's checkpoint to ``target`` (the folder name becomes the model name) and evaluate it there,
    so its metrics.json, card.md and figures are its own. The sha256 of the weights and of the gate's tensors
    cover those files only, so renaming leaves them valid (checked by loading)."""
    from app.checkpoint.files import read_manifest, write_manifest
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.evaluate import evaluate, score_sets, write_evaluation

    if target.exists():
        if not (target / MANIFEST_FILE).is_file():
            raise FileExistsError(f"{target} exists and is not a checkpoint folder; not replacing it")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    manifest = read_manifest(source)
    for name in (WEIGHTS_FILE, manifest.gate.tensors.file):
        shutil.copy2(source / name, target / name)
    write_manifest(target, manifest.model_copy(update={"name": target.name, "metrics": {}}))
    checkpoint = load_checkpoint(target)
    scored = score_sets(checkpoint, dataset, seed=EVALUATION_SEED)
    result = evaluate(checkpoint, dataset, scored=scored)
    write_evaluation(checkpoint, dataset, result, figures=True, scored=scored)
    return {
        "folder": str(target),
        "source": source.name,
        "kind": manifest.kind.value,
        "seed": manifest.training.seed,
        "best_val_nll": manifest.training.best_val_nll,
        "bytes": sum(p.stat().st_size for p in target.iterdir() if p.is_file()),
    }


def _bound_sections(best: Mapping[str, Path], out: Path, dataset: TabularDataset) -> tuple[str, dict[str, Any]]:
    """PAC-Bayes bound sections of the best lowrank and fullrank models, the deterministic run of the same seed
    as twin."""
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.bound import bound_report, render_bound_markdown

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


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _threads(count: int) -> str:
    return f"{count} torch thread" + ("" if count == 1 else "s")


def _kept_observations(path: Path) -> str:
    if path.is_file():
        text = path.read_text()
        if OBSERVATIONS_START in text and OBSERVATIONS_END in text:
            return text.split(OBSERVATIONS_START, 1)[1].split(OBSERVATIONS_END, 1)[0].strip()
    return "_Not written yet: read the tables and figures, then write what they show here._"


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
        "Verdicts follow from the numbers below by the stated rule: *holds* when every condition is met, *holds "
        "in part* when some are, *does not hold* when none is. The paper's numbers come from MIMIC-III (44 "
        "inputs, 8.4% deaths); these come from a different, smaller clinical task.\n",
    ]
    claim_rows = [
        [
            c["statement"],
            c["rule"],
            "; ".join(("✓ " if cond["holds"] else "✗ ") + cond["text"] for cond in c["conditions"])
            or "needs " + ", ".join(c["missing"]),
            f"**{c['verdict']}**",
        ]
        for c in report["claims"]
    ]
    out.append(table(["claim", "rule", "evidence", "verdict"], claim_rows, align="l"))

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


def write_results(
    plan: Plan,
    dataset: TabularDataset,
    out: str | Path,
    docs: str | Path,
    models: str | Path | None,
    command: str,
    ablation: bool = True,
) -> dict[str, Any]:
    """Aggregate the finished runs of ``plan`` under ``out``: write ``docs/results.md``, the figures and
    ``results.json`` under ``docs/results/``, and copy the best seed of each kind to ``models/<data>-<label>``
    (unless ``models`` is None). Returns the numbers written to ``results.json``."""
    from app.evaluate.results_plots import (
        ParetoPoint,
        write_ood_histogram_grid,
        write_rank_ablation,
        write_reliability_grid,
        write_risk_coverage,
    )

    out, docs = Path(out), Path(docs)
    figures_dir = docs / "results"
    figures_dir.mkdir(parents=True, exist_ok=True)
    comparison = plan.comparison_runs(out)
    grouped = _results(comparison)
    labels = [v.label for v in plan.variants]
    summary = {label: summarise(grouped[label]) for label in labels}
    folders = {label: [r.folder for r in comparison if r.label == label] for label in labels}

    # Inference times after all training, each run in turn.
    load_before = _load_average()
    timing: dict[str, dict[str, Any]] = {}
    for label in labels:
        per_run = [time_inference(folder, dataset, plan.timing_repeats) for folder in folders[label]]
        timing[label] = {key: mean_std([t[key] * 1e3 for t in per_run]) for key in per_run[0]}  # milliseconds
    timing_load = (load_before, _load_average())

    best = {
        label: min(folders[label], key=lambda f: load_result(f)["training"]["best_val_nll"])  # type: ignore[index]
        for label in labels
    }
    scores = {label: [_scores(folder) for folder in folders[label]] for label in labels}

    # Risk–coverage per kind: mean ± std over seeds at each referred fraction.
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"mutual information": {}, "total entropy": {}}
    risk_table: dict[str, dict[str, dict[str, Any]]] = {}
    for label in labels:
        risk_table[label] = {}
        for key, name in (("mutual_information", "mutual information"), ("total", "total entropy")):
            column = "test_mi" if key == "mutual_information" else "test_total"
            stacked = np.stack(
                [risk_coverage(s["test_y"], s["test_probs"], s[column], REFERRED) for s in scores[label]]
            )
            spread = stacked.std(0, ddof=1) if len(stacked) > 1 else np.zeros(stacked.shape[1])
            curves[name][label] = (stacked.mean(0), spread)
            risk_table[label][key] = {
                str(f): mean_std(stacked[:, int(np.argmin(np.abs(REFERRED - f)))].tolist()) for f in REFERRAL_TABLE
            }

    claims = assess_claims(summary)
    ablation_rows = _ablation(plan, out) if ablation and plan.ablation_ranks and plan.ablation_seeds else []
    energy = singular_value_energy(folders["deterministic"]) if "deterministic" in folders else {}

    # Figures.
    figures = {
        "reliability": "results/reliability.png",
        "risk_coverage": "results/risk_coverage.png",
        "ood_histograms": "results/ood_scores.png",
        "rank_ablation": "results/rank_ablation.png",
    }
    pooled = {
        label: (
            np.concatenate([s["test_y"] for s in scores[label]]),
            np.concatenate([s["test_probs"] for s in scores[label]]),
        )
        for label in labels
    }
    seeds_note = f"seeds {', '.join(map(str, plan.seeds))}"
    write_reliability_grid(
        docs / figures["reliability"],
        pooled,
        ECE_BINS,
        note=f"{dataset.name} test split, predictions of {seeds_note} pooled",
    )
    write_risk_coverage(
        docs / figures["risk_coverage"],
        REFERRED,
        curves,
        note=f"{dataset.name} test split, mean ± std over {seeds_note}",
    )
    histograms = {}
    for label in labels:
        best_scores = _scores(best[label])
        ood = {k.split("__", 1)[1]: v for k, v in best_scores.items() if k.startswith("ood_mi__")}
        threshold = load_result(best[label])["epistemic_threshold"]  # type: ignore[index]
        histograms[f"{label} ({best[label].name})"] = (best_scores["test_mi"], ood, threshold)
    write_ood_histogram_grid(
        docs / figures["ood_histograms"],
        histograms,
        note="the served (best validation NLL) seed of each kind; dashed: its OOD gate",
    )
    if ablation_rows:
        others = [label for label in labels if label != ABLATION_BASE and label != "lowrank-svd"]
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
            ood_auroc = mean_std([_mean_ood_auroc(r) for r in grouped[label]])
            ood_points.append(ParetoPoint(label, s["parameter_count"], ood_auroc["mean"], ood_auroc["std"], False))
        energy_curves = {
            layer: (np.array(c["ranks"]), np.array(c["mean"]), np.array(c["std"])) for layer, c in energy.items()
        }
        write_rank_ablation(
            docs / figures["rank_ablation"],
            auroc_points,
            ood_points,
            energy_curves,
            marked_rank=15,
            paper_energy=PAPER_ENERGY_AT_15,
        )

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
        "machine": _machine(),
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
    markdown_path = docs / "results.md"
    markdown = render_markdown(report, _kept_observations(markdown_path), figures)
    markdown_path.write_text(markdown)
    return report


def command_line() -> str:
    """The command as typed (``sbnn compare ...``), for the report's header."""
    return " ".join(["sbnn", *sys.argv[1:]]) if Path(sys.argv[0]).name == "sbnn" else " ".join(sys.argv)
