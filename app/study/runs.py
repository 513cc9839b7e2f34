"""Training and evaluating the runs of a plan, resumably, and reading back what they left.

Each run trains into its folder with :func:`~app.train.pipeline.train_checkpoint`, is evaluated with
:func:`~app.evaluate.evaluate.evaluate` and leaves a ``result.json`` (the numbers) and ``scores.npz`` (per-row
scores for the figures) there. A run whose ``result.json`` holds the same training config is skipped, so an
interrupted comparison resumes where it stopped; a changed config retrains. A run stopped after its checkpoint was
written (training and the gate's calibration done, evaluation not) is evaluated from that checkpoint
(:func:`trained_or_train`) instead of retrained: its result says ``resumed``, and its ``wall_seconds`` are the
checkpoint's training time plus this evaluation.

Results are aggregated and written by :mod:`app.study.publish`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.checkpoint.files import atomic_write
from app.data.dataset import TabularDataset
from app.data.sequence import SequenceDataset
from app.study.design import EVALUATION_SEED, RunSpec, StudyPlan
from app.train.loop import EpochLog

RESULT_FILE = "result.json"
SCORES_FILE = "scores.npz"


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its numbers (``result.json``), whether it was trained now (or, ``resumed``, evaluated now
    from a checkpoint trained before), and the wall time spent."""

    run: RunSpec
    result: dict[str, Any]
    trained: bool
    seconds: float
    resumed: bool = False


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


def trained_or_train(
    run: RunSpec, train: Callable[..., tuple[Any, Any]], dataset: Any, on_epoch: Callable[[EpochLog], None] | None
) -> tuple[Any, Any, bool]:
    """(manifest, training record, resumed): the checkpoint already in ``run``'s folder when it verifies and was
    trained with this very config, else ``train(dataset, config, folder)``'s."""
    from app.checkpoint.io import load_checkpoint
    from app.errors import CheckpointError

    if (run.folder / "manifest.json").is_file():  # written last, once the gate is calibrated
        try:
            manifest = load_checkpoint(run.folder).manifest  # checks every file's hash against the manifest
        except CheckpointError:
            manifest = None
        if manifest is not None and manifest.training.config == run.config.model_dump(mode="json"):
            return manifest, manifest.training, True
    manifest, trained = train(dataset, run.config, run.folder, on_epoch=on_epoch)
    return manifest, trained, False


def keep_records(runs: Sequence[RunSpec], into: Path) -> list[Path]:
    """Copy every finished run's ``result.json`` and ``scores.npz`` (its per-seed metrics and per-row scores, not
    its checkpoint) to ``into/<run>/``, where they are committed with the report and a study resumes from them
    (``cp -r docs/results/runs/<study> runs/``). Returns the folders written."""
    import shutil

    kept = []
    for run in runs:
        if not is_done(run):
            continue
        target = into / run.folder.name
        if target.resolve() == run.folder.resolve():
            continue  # the study ran in the records' own folder
        target.mkdir(parents=True, exist_ok=True)
        for name in (RESULT_FILE, SCORES_FILE):
            shutil.copyfile(run.folder / name, target / name)
        kept.append(target)
    return kept


def load_results(runs: Sequence[RunSpec]) -> dict[str, list[dict[str, Any]]]:
    """Finished results grouped by label, in seed order; a missing one is an error (run `sbnn compare`)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        result = load_result(run.folder)
        if result is None:
            raise FileNotFoundError(f"{run.folder}: no result.json; run the comparison (sbnn compare) first")
        grouped.setdefault(run.label, []).append(result)
    return grouped


def load_scores(folder: Path) -> dict[str, np.ndarray]:
    """The run's ``scores.npz``: test labels, probs (N, C) and uncertainties, OOD scores per set."""
    with np.load(folder / SCORES_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _score_arrays(scored: Any, y_test: np.ndarray) -> dict[str, np.ndarray]:
    """The per-row scores the figures and intervals need: test probs (N, C), labels, uncertainties and gate
    levels; OOD probs, MI, std and gate levels."""
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
        arrays[f"ood_probs__{name}"] = gated.predictions.probs  # the risk a risk-matched comparison needs
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
    if (done := finished_run(run, started)) is not None:
        return done
    manifest, trained, resumed = trained_or_train(run, train_checkpoint, dataset, on_epoch)
    checkpoint = load_checkpoint(run.folder)
    scored = score_sets(checkpoint, dataset, seed=EVALUATION_SEED)
    metrics = evaluate(checkpoint, dataset, scored=scored)
    with open(run.folder / SCORES_FILE, "wb") as handle:
        np.savez_compressed(handle, **_score_arrays(scored, dataset.test.y))
    return record_run(run, manifest, trained, metrics, started)


def finished_run(run: RunSpec, started: float) -> RunOutcome | None:
    """The outcome of ``run`` read back when it already finished with this config, else None (and any stale
    result removed, so that it cannot survive a failed retrain)."""
    if is_done(run):
        result = load_result(run.folder)
        assert result is not None
        return RunOutcome(run, result, trained=False, seconds=time.perf_counter() - started)
    (run.folder / RESULT_FILE).unlink(missing_ok=True)
    return None


def record_run(
    run: RunSpec, manifest: Any, trained: Any, metrics: dict[str, Any], started: float, resumed: bool = False
) -> RunOutcome:
    """Write the finished run's ``result.json`` (last and atomically: its presence marks the run as done);
    ``resumed``: evaluated from a checkpoint an earlier process trained."""
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
        # training, gate calibration and evaluation (resumed: the training loop's time, then evaluation's)
        "wall_seconds": time.perf_counter() - started + (trained.duration_seconds if resumed else 0.0),
    }
    if resumed:
        result["resumed"] = True
    atomic_write(run.folder / RESULT_FILE, (json.dumps(result, indent=2) + "\n").encode())
    return RunOutcome(run, result, trained=not resumed, seconds=time.perf_counter() - started, resumed=resumed)


def run_comparison(
    plan: StudyPlan,
    dataset: TabularDataset | SequenceDataset,
    out: str | Path,
    ablation: bool = True,
    reporter: Reporter | None = None,
    run_one: Callable[..., RunOutcome] = run_one,
) -> list[RunOutcome]:
    """Train and evaluate every run of ``plan`` under ``out`` (skipping finished ones), in order; ``run_one``
    trains one (the recurrent study passes its own, :func:`app.study.sequences.run_sequence_one`)."""
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
        status = "trained" if outcome.trained else "evaluated" if outcome.resumed else "done before, skipped"
        if "rmse" in test:  # a regression (the recurrent study's PM2.5)
            scores = f"RMSE {test['rmse']:.3f}   NLL {test['nll']:.3f}   PICP90 {test['picp_90']:.3f}"
        else:
            scores = f"AUROC {test['auroc']:.3f}   NLL {test['nll']:.3f}   ECE {test['ece']:.3f}"
        self.progress.console.print(
            f"{outcome.run.name:<22} {status:<21} {outcome.seconds:7.1f} s   epochs {training['epochs_run']:>3}   "
            + scores
        )
        self.progress.update(self.overall, advance=1)
        self.progress.update(self.current, visible=False)
