"""`sbnn compare`: every layer kind trained on one data set under the same budget, over several seeds.

The data set and its split stay fixed (the split a bundled model was trained on); only the training seed
varies. Each (variant, seed) trains into ``<out>/<label>-s<seed>/`` with :func:`train_checkpoint`, is evaluated
with :func:`evaluate` and leaves a ``result.json`` (the numbers) and ``scores.npz`` (per-row scores for the
figures) there. A run whose ``result.json`` holds the same training config is skipped, so an interrupted
comparison resumes where it stopped; a changed config retrains.

Results are aggregated and written by :mod:`app.evaluate.results`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from app.bnn.spec import LayerKind
from app.checkpoint.files import atomic_write
from app.data.dataset import TabularDataset
from app.train.config import TrainConfig
from app.train.loop import EpochLog

RESULT_FILE = "result.json"
SCORES_FILE = "scores.npz"
EVALUATION_SEED = 0  # every run is scored with the same weight-sample seed, as `sbnn evaluate` does
ABLATION_BASE = "lowrank"  # the variant whose rank the ablation varies


@dataclass(frozen=True)
class Variant:
    """One contender: a label, its TrainConfig overrides, and optionally the variant whose run of the same
    seed is its SVD warm-start twin (a deterministic network)."""

    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    warm_start_from: str | None = None
    description: str = ""


COMPARISON: tuple[Variant, ...] = (
    # The deterministic network comes first: lowrank-svd starts from its run of the same seed.
    Variant("deterministic", {"kind": LayerKind.DETERMINISTIC}, description="one point estimate"),
    Variant("lowrank", {"kind": LayerKind.LOWRANK}, description="singular BNN, rank 15 hidden, 1 at the output"),
    Variant(
        "lowrank-svd",
        {"kind": LayerKind.LOWRANK},
        warm_start_from="deterministic",
        description="singular BNN, factor means from the SVD of the deterministic run of the same seed",
    ),
    Variant("fullrank", {"kind": LayerKind.FULLRANK}, description="mean-field Bayes by Backprop"),
    Variant("ensemble", {"kind": LayerKind.ENSEMBLE, "members": 5}, description="deep ensemble of 5"),
    Variant("mcdropout", {"kind": LayerKind.MCDROPOUT}, description="MC dropout, p = 0.1 on hidden inputs"),
    Variant("rank1", {"kind": LayerKind.RANK1}, description="rank-1 multiplicative (Dusenberry et al.)"),
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: which variant, which seed, its full config and its folder."""

    label: str  # variant label, or "lowrank-r<r>" for an ablation run
    seed: int
    config: TrainConfig
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class AblationPoint:
    """A rank of the ablation at one seed, and the run that measures it (the lowrank run itself at its rank)."""

    rank: int
    seed: int
    run: RunSpec


@dataclass(frozen=True)
class Plan:
    """What ``sbnn compare`` trains. Every run shares the TrainConfig defaults (the budget rules: epochs,
    patience, batch, learning rate, β and its warm-up) except what a variant overrides; ``shared`` adds
    overrides for every run (tiny plans in tests)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[Variant, ...] = COMPARISON
    ablation_ranks: tuple[int, ...] = (1, 2, 4, 8, 15, 32, 64)
    epochs: int = 200
    hidden: tuple[int, ...] = (128, 128)
    samples: int = 512
    shared: Mapping[str, Any] = field(default_factory=dict)
    timing_repeats: int = 5

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a plan needs at least one seed")
        labels = [v.label for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant labels must be unique, got {labels}")
        for index, variant in enumerate(self.variants):
            if variant.warm_start_from is not None and variant.warm_start_from not in labels[:index]:
                raise ValueError(
                    f"variant '{variant.label}' warm-starts from '{variant.warm_start_from}', which must be an "
                    f"earlier variant of the plan ({labels[:index]})"
                )
        if self.ablation_ranks and self.ablation_seeds and ABLATION_BASE not in labels:
            raise ValueError(f"the rank ablation varies the '{ABLATION_BASE}' variant, which the plan lacks")
        if any(r < 1 for r in self.ablation_ranks):
            raise ValueError(f"ablation ranks must be ≥ 1, got {self.ablation_ranks}")
        if self.timing_repeats < 1:
            raise ValueError(f"timing_repeats must be ≥ 1, got {self.timing_repeats}")
        for variant in self.variants:  # a config the budget rules refuse fails now, not after hours of training
            try:
                self.config(variant, self.seeds[0], Path("."))
            except ValidationError as exc:
                first = exc.errors()[0]
                field_name = ".".join(map(str, first["loc"]))
                raise ValueError(f"variant '{variant.label}': {field_name}: {first['msg']}") from None

    def variant(self, label: str) -> Variant:
        for variant in self.variants:
            if variant.label == label:
                return variant
        raise KeyError(f"no variant '{label}' in the plan")

    def config(self, variant: Variant, seed: int, out: Path, **extra: Any) -> TrainConfig:
        """The TrainConfig of ``variant`` at ``seed``; a warm start points at its twin's run folder."""
        values: dict[str, Any] = {
            "epochs": self.epochs,
            "hidden": list(self.hidden),
            "default_samples": self.samples,
            **self.shared,
            **variant.overrides,
            **extra,
            "seed": seed,
        }
        if variant.warm_start_from is not None:
            values["warm_start"] = str(out / f"{variant.warm_start_from}-s{seed}")
        return TrainConfig(**values)

    def comparison_runs(self, out: Path) -> list[RunSpec]:
        """Every variant at every seed, seed by seed (so a twin is trained before the run it seeds)."""
        return [
            RunSpec(v.label, seed, self.config(v, seed, out), out / f"{v.label}-s{seed}")
            for seed in self.seeds
            for v in self.variants
        ]

    def ablation_points(self, out: Path) -> list[AblationPoint]:
        """Every ablation rank at every ablation seed; the base variant's own rank reuses its runs."""
        base = self.variant(ABLATION_BASE) if self.ablation_ranks and self.ablation_seeds else None
        points = []
        for rank in self.ablation_ranks:
            for seed in self.ablation_seeds:
                assert base is not None  # checked in __post_init__
                base_config = self.config(base, seed, out)
                if base_config.rank == rank and base_config.ranks is None:
                    run = RunSpec(base.label, seed, base_config, out / f"{base.label}-s{seed}")
                else:
                    config = self.config(base, seed, out, rank=rank)
                    run = RunSpec(f"{base.label}-r{rank}", seed, config, out / f"{base.label}-r{rank}-s{seed}")
                points.append(AblationPoint(rank, seed, run))
        return points

    def runs(self, out: Path, ablation: bool = True) -> list[RunSpec]:
        """The runs to train, each once, in training order: the comparison, then the ablation's own runs."""
        ordered = self.comparison_runs(out) + ([p.run for p in self.ablation_points(out)] if ablation else [])
        unique: dict[Path, RunSpec] = {}
        for run in ordered:
            unique.setdefault(run.folder, run)
        return list(unique.values())


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its numbers (``result.json``), whether it was trained now, and the wall time spent."""

    run: RunSpec
    result: dict[str, Any]
    trained: bool
    seconds: float


class Reporter(Protocol):
    """Progress of a comparison: told when a run starts, after each of its epochs, and when it is done."""

    def started(self, run: RunSpec, index: int, total: int) -> None: ...

    def epoch(self, log: EpochLog) -> None: ...

    def finished(self, outcome: RunOutcome) -> None: ...


def load_result(folder: Path) -> dict[str, Any] | None:
    """The run's ``result.json``, or None when the run has not finished."""
    path = folder / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_done(run: RunSpec) -> bool:
    """True when ``run``'s folder holds a result of this very config (and its scores)."""
    result = load_result(run.folder)
    return (
        result is not None
        and result.get("config") == run.config.model_dump(mode="json")
        and (run.folder / SCORES_FILE).is_file()
    )


def _score_arrays(scored: Any, y_test: np.ndarray) -> dict[str, np.ndarray]:
    """The per-row scores the figures need: test probs (N, C), labels, uncertainties and gate levels; OOD MI,
    std and gate levels."""
    test = scored.test.predictions
    arrays = {
        "test_y": y_test,
        "test_probs": test.probs,
        "test_mi": test.epistemic,
        "test_std": test.std,
        "test_total": test.total,
        "test_gate": scored.test.ranking,
    }
    for name, gated in scored.ood.items():
        arrays[f"ood_mi__{name}"] = gated.predictions.epistemic
        arrays[f"ood_std__{name}"] = gated.predictions.std
        arrays[f"ood_gate__{name}"] = gated.ranking
    return arrays


def run_one(run: RunSpec, dataset: TabularDataset, on_epoch: Callable[[EpochLog], None] | None = None) -> RunOutcome:
    """Train ``run`` into its folder and evaluate it, or read its result if it already finished."""
    # Imported here: training and evaluation pull in pandas and the training stack.
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.evaluate import evaluate, score_sets
    from app.train.pipeline import train_checkpoint

    started = time.perf_counter()
    if is_done(run):
        result = load_result(run.folder)
        assert result is not None
        return RunOutcome(run, result, trained=False, seconds=time.perf_counter() - started)

    (run.folder / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not survive a failed retrain
    manifest, trained = train_checkpoint(dataset, run.config, run.folder, on_epoch=on_epoch)
    checkpoint = load_checkpoint(run.folder)
    scored = score_sets(checkpoint, dataset, seed=EVALUATION_SEED)
    metrics = evaluate(checkpoint, dataset, scored=scored)
    with open(run.folder / SCORES_FILE, "wb") as handle:
        np.savez_compressed(handle, **_score_arrays(scored, dataset.test.y))
    result = {
        "label": run.label,
        "seed": run.seed,
        "kind": manifest.kind.value,
        "config": run.config.model_dump(mode="json"),
        "parameter_count": manifest.parameter_count,
        "ranks": manifest.ranks,
        "default_samples": manifest.default_samples,
        "epistemic_threshold": manifest.gate.epistemic.threshold,
        "training": {
            "duration_seconds": trained.duration_seconds,
            "epochs_run": trained.epochs_run,
            "best_epoch": trained.best_epoch,
            "best_val_nll": trained.best_val_nll,
            "device": trained.device,
        },
        "metrics": metrics,
        "wall_seconds": time.perf_counter() - started,  # training, gate calibration and evaluation
    }
    # Written last and atomically: its presence is what marks the run as done.
    atomic_write(run.folder / RESULT_FILE, (json.dumps(result, indent=2) + "\n").encode())
    return RunOutcome(run, result, trained=True, seconds=time.perf_counter() - started)


def run_comparison(
    plan: Plan,
    dataset: TabularDataset,
    out: str | Path,
    ablation: bool = True,
    reporter: Reporter | None = None,
) -> list[RunOutcome]:
    """Train and evaluate every run of ``plan`` under ``out`` (skipping finished ones), in order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan.runs(out, ablation=ablation)
    outcomes = []
    for index, run in enumerate(runs, start=1):
        if reporter is not None:
            reporter.started(run, index, len(runs))
        outcome = run_one(run, dataset, on_epoch=None if reporter is None else reporter.epoch)
        outcomes.append(outcome)
        if reporter is not None:
            reporter.finished(outcome)
    return outcomes


class RichReporter:
    """One line per finished run (with its wall time) above a live bar of the run in progress."""

    def __init__(self, progress: Any) -> None:
        """``progress``: a started ``rich.progress.Progress`` whose console receives the per-run lines."""
        self.progress = progress
        self.overall = progress.add_task("comparison", total=None)
        self.current = progress.add_task("", total=None, visible=False)
        self._run: RunSpec | None = None

    def started(self, run: RunSpec, index: int, total: int) -> None:
        self._run = run
        self.progress.update(self.overall, total=total, completed=index - 1, description=f"run {index}/{total}")
        self.progress.reset(self.current, total=run.config.epochs, description=run.name, visible=True)

    def epoch(self, log: EpochLog) -> None:
        name = self._run.name if self._run is not None else ""
        self.progress.update(
            self.current, completed=log.epoch, description=f"{name}  epoch {log.epoch}  val nll {log.val_nll:.4f}"
        )

    def finished(self, outcome: RunOutcome) -> None:
        test = outcome.result["metrics"]["test"]
        training = outcome.result["training"]
        status = "trained" if outcome.trained else "done before, skipped"
        self.progress.console.print(
            f"{outcome.run.name:<22} {status:<21} {outcome.seconds:7.1f} s   epochs {training['epochs_run']:>3}   "
            f"AUROC {test['auroc']:.3f}   NLL {test['nll']:.3f}   ECE {test['ece']:.3f}"
        )
        self.progress.update(self.overall, advance=1)
        self.progress.update(self.current, visible=False)


def make_plan(seeds: int | None = None, epochs: int | None = None, ablation: bool = True, quick: bool = False) -> Plan:
    """The plan of ``sbnn compare``: the full comparison (3 seeds, 200 epochs, S = 512, every ablation rank at
    every seed) or, ``quick``, a smoke test of the same pipeline (2 seeds, 30 epochs, S = 128, ranks 1, 4, 15
    and 64 at seed 0), with ``seeds`` and ``epochs`` overriding either."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    chosen = tuple(range(seeds if seeds is not None else (2 if quick else 3)))
    return Plan(
        seeds=chosen,
        ablation_seeds=() if not ablation else (chosen[:1] if quick else chosen),
        ablation_ranks=() if not ablation else ((1, 4, 15, 64) if quick else Plan.ablation_ranks),
        epochs=epochs if epochs is not None else (30 if quick else Plan.epochs),
        samples=128 if quick else Plan.samples,
    )
