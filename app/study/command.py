"""The ``sbnn compare`` command: run the comparison study (resumable), then publish its report and models.

A plain function with typer's annotations, registered by :mod:`app.cli` and printing through its shared consoles
(:mod:`app.cli_options`); heavy imports happen inside it, so ``sbnn --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from app.cli_options import console, guard


def compare(
    out: Annotated[
        Path | None, typer.Option(help="Runs folder [default: runs/compare; quick: runs/compare-quick].")
    ] = None,
    docs: Annotated[
        Path | None, typer.Option(help="Where results.md and results/ go [default: docs; quick: OUT/docs].")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            help="Where the best model of each kind goes (a recurrent or text study: its best run) [default: "
            "models; quick: OUT/models]."
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Training seeds 0..N-1 [default: 5 (flchain), 3 (the others); quick: 2].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs of every run [default: 200; quick: 30].")] = None,
    skip_ablation: Annotated[bool, typer.Option(help="Skip the rank ablation.")] = False,
    quick: Annotated[bool, typer.Option(help="Smoke test of the pipeline: fewer seeds, epochs and samples.")] = False,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads; 1 keeps timings comparable (the networks are small).")
    ] = 1,
    dataset: Annotated[
        str,
        typer.Option(
            help="flchain (the MLP study: docs/results.md), pm25 / pbcseq (the recurrent study) or "
            "rotten-tomatoes (the Transformer study): docs/results-<data>.md, runs under runs/compare-<data>."
        ),
    ] = "flchain",
) -> None:
    """Train every kind on flchain with the same budget over several seeds (resumable), then write
    docs/results.md with tables, claims and figures, and save the best model of each kind; with --dataset
    pm25 or pbcseq, the paper's recurrent comparison (LSTMs), with rotten-tomatoes its attention comparison
    (Transformers), its report and its best run (lowest validation NLL) as models/<name> instead."""
    import time

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.data.flchain import load_flchain
    from app.study.design import make_study_plan
    from app.study.publish import command_line, write_results
    from app.study.runs import RichReporter, run_comparison

    if threads < 1:
        raise typer.BadParameter(f"must be ≥ 1, got {threads}", param_hint="--threads")
    torch.set_num_threads(threads)
    if dataset != "flchain":
        _compare_sequences(dataset, out, docs, models, seeds, epochs, skip_ablation, quick)
        return
    out = out or Path("runs/compare-quick" if quick else "runs/compare")
    docs = docs or (out / "docs" if quick else Path("docs"))
    models = models or (out / "models" if quick else Path("models"))
    started = time.perf_counter()
    with guard("compare", "train", "data"):
        plan = make_study_plan(seeds=seeds, epochs=epochs, ablation=not skip_ablation, quick=quick)
        # The bundled model's split (seed 0) for every run: only the training seed varies.
        dataset = load_flchain(seed=0)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            outcomes = run_comparison(plan, dataset, out, ablation=not skip_ablation, reporter=RichReporter(progress))
        console.print("measuring inference times, drawing figures, saving the best model of each kind …")
        report = write_results(plan, dataset, out, docs, models, command_line(), ablation=not skip_ablation)
    trained = sum(o.trained for o in outcomes)
    console.print(
        f"{trained} of {len(outcomes)} runs trained now ({len(outcomes) - trained} done before); wrote "
        f"[bold]{escape(str(docs / 'results.md'))}[/] and {len(report['models'])} models under "
        f"{escape(str(models))} in "
        f"{time.perf_counter() - started:.0f} s"
    )
    for claim in report["claims"]:
        console.print(f"  {claim['verdict']:<14} {claim['statement']}", markup=False, highlight=False)


def _compare_sequences(
    dataset: str,
    out: Path | None,
    docs: Path | None,
    models: Path | None,
    seeds: int | None,
    epochs: int | None,
    skip: bool,
    quick: bool,
) -> None:
    """The recurrent study on ``dataset`` (pm25 or pbcseq), or the Transformer study (rotten-tomatoes): its runs,
    then docs/results-<dataset>.md."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.data.sequence_table import BUNDLED_SEQUENCES, load_bundled_sequences
    from app.study.publish import command_line
    from app.study.runs import RichReporter
    from app.study.sequence_report import write_sequence_results
    from app.study.sequences import make_sequence_plan, run_sequence_comparison
    from app.study.texts import make_text_plan, run_text_comparison

    text = dataset == "rotten-tomatoes"
    if dataset not in BUNDLED_SEQUENCES and not text:
        available = ", ".join(("flchain", *BUNDLED_SEQUENCES, "rotten-tomatoes"))
        raise typer.BadParameter(f"unknown data set {dataset!r}; available: {available}", param_hint="--dataset")
    out = out or Path(f"runs/compare-{dataset}{'-quick' if quick else ''}")
    docs = docs or (out / "docs" if quick else Path("docs"))
    models = models or (out / "models" if quick else Path("models"))
    started = time.perf_counter()
    with guard("compare", "train", *(["data"] if dataset in ("pbcseq", "rotten-tomatoes") else [])):
        make_plan, run = (
            (make_text_plan, run_text_comparison) if text else (make_sequence_plan, run_sequence_comparison)
        )
        plan = make_plan(seeds=seeds, epochs=epochs, ablation=not skip, quick=quick)
        if text:
            from app.data.rotten_tomatoes import load_rotten_tomatoes

            data = load_rotten_tomatoes(seed=0)  # the fixed split by movie: only the training seed varies
        else:
            data = load_bundled_sequences(dataset, seed=0)  # the fixed split: only the training seed varies
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            outcomes = run(plan, data, out, ablation=not skip, reporter=RichReporter(progress))  # type: ignore[arg-type]
        numbers = write_sequence_results(
            plan, out, docs, dataset, data.is_regression, command_line(), ablation=not skip, models=models
        )
    trained = sum(o.trained for o in outcomes)
    console.print(
        f"{trained} of {len(outcomes)} runs trained now; wrote [bold]{escape(str(docs / f'results-{dataset}.md'))}[/] "
        f"and {escape(numbers['bundled']['folder'])} (from {numbers['bundled']['source']}) in "
        f"{time.perf_counter() - started:.0f} s"
    )
    for claim in numbers["verdicts"]:
        console.print(f"  {claim['verdict']:<14} {claim['statement']}: {claim['figures']}", markup=False)
