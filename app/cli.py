"""The ``sbnn`` command line: train, evaluate and inspect checkpoints.

Heavy imports happen inside each command, so ``sbnn --help`` is instant and the serving install does not
need the training extras. Help is plain text (no rich markup), so ``[default: …]`` and ``sbnn[onnx]`` show as
written; what the commands share (parsers, messages, progress) is in :mod:`app.cli_options`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from app.audit.command import audit_app
from app.bnn.spec import Activation, LayerKind, PriorKind
from app.cli_options import (
    CommandGroup,
    console,
    errors,
    guard,
    parse_ints,
    run,
    source_extras,
    steps,
    warn,
)
from app.mcmc.command import mcmc
from app.serve.keys_command import keys_app
from app.serve.models_command import models_app
from app.serve.serve_command import serve
from app.study.command import compare
from app.train.config import ClassWeight

app = typer.Typer(
    name="sbnn",
    cls=CommandGroup,
    help="Singular (low-rank) Bayesian neural networks: train, evaluate and serve uncertainty scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help as written: rich markup would eat every [...]
    context_settings={"max_content_width": 120},
)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.command()(serve)
app.command()(mcmc)
# TrainConfig fields whose option has another name.
OPTION_OF_FIELD = {"kl_warmup_epochs": "--kl-warmup", "default_samples": "--samples"}


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write, e.g. models/<name>.")],
    kind: Annotated[LayerKind, typer.Option(help="Layer kind.")] = LayerKind.LOWRANK,
    rank: Annotated[int, typer.Option(help="Rank of the hidden layers (capped at min(m, n)); output rank 1.")] = 15,
    ranks: Annotated[str | None, typer.Option(help="Explicit rank per layer, e.g. '9,15,1' (lowrank).")] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths: MLP layers (default 128,128), or LSTM layers (default 64,64).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Bundled data set: flchain or pbcseq (needs sbnn[data]), pm25 (Beijing PM2.5), or rotten-tomatoes "
            "(review snippets, a Transformer; needs sbnn[data] for its food-review OOD set)."
        ),
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Your own table (CSV or Parquet) instead of --dataset.")] = None,
    target: Annotated[str | None, typer.Option(help="Target column of --csv.")] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="classification or regression (default: inferred; a numeric target with many distinct or "
            "fractional values is a regression)."
        ),
    ] = None,
    features: Annotated[str | None, typer.Option(help="Feature columns of --csv (default: all but target).")] = None,
    categorical: Annotated[str | None, typer.Option(help="Numeric-looking columns to treat as categories.")] = None,
    sequence_id: Annotated[
        str | None, typer.Option(help="Long --csv table: the column grouping rows into sequences (with --time).")
    ] = None,
    time: Annotated[
        str | None, typer.Option(help="Long --csv table: the column ordering each sequence's steps.")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            help="Steps an LSTM sees (default: the longest training sequence, at most 64), or tokens a "
            "Transformer reads, [CLS] included (default 64)."
        ),
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Text data: WordPiece tokens of the tokenizer.")] = 8000,
    drop: Annotated[
        str | None, typer.Option(help="Columns of --csv to leave out of the features, e.g. 'name,patient_id'.")
    ] = None,
    ood_csv: Annotated[Path | None, typer.Option(help="Your own shifted cohort, scored as an OOD set.")] = None,
    bounds: Annotated[
        str | None,
        typer.Option(
            help="Plausible values of --csv features, e.g. 'age=0:120,creatinine=0:30' (a side may be "
            "empty); the gate rejects rows outside them."
        ),
    ] = None,
    units: Annotated[
        str | None,
        typer.Option(
            help="Units of --csv features, e.g. 'age=years,creatinine=mg/dL' (the stress suite converts them); "
            "a regression's target may have one too, e.g. 'weight=kg' (its answers name it)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the folder name).")] = None,
    version: Annotated[str, typer.Option(help="Model version string.")] = "1",
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    beta: Annotated[
        float | None, typer.Option(help="KL weight (1 = plain ELBO) [default: 0.5; text 0.001, the paper's].")
    ] = None,
    kl_warmup: Annotated[int | None, typer.Option(help="Epochs of linear KL annealing [default: 10; text 2].")] = None,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 20,
    class_weight: Annotated[ClassWeight, typer.Option(help="Likelihood weighting of classes.")] = ClassWeight.NONE,
    prior: Annotated[PriorKind, typer.Option(help="Prior on factor entries.")] = PriorKind.MIXTURE,
    members: Annotated[int, typer.Option(help="Ensemble members (kind ensemble).")] = 5,
    dropout: Annotated[float, typer.Option(help="Dropout rate (kind mcdropout).")] = 0.1,
    samples: Annotated[
        int | None, typer.Option(help="Default Monte Carlo samples at test time (MLP 512, LSTM 150: the paper's).")
    ] = None,
    target_fpr: Annotated[
        float, typer.Option(help="OOD gate: false-positive budget of the union of its components.")
    ] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and noise.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    evaluate: Annotated[bool, typer.Option(help="Run `sbnn evaluate` on the result.")] = True,
    warm_start: Annotated[
        Path | None,
        typer.Option(help="Trained deterministic checkpoint (same data, widths) for an SVD warm start (lowrank)."),
    ] = None,
) -> None:
    """Train a network, calibrate its OOD gate and save a checkpoint folder."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.cli_data import is_sequence_data, is_text_data, load_training_data
    from app.train.config import TrainConfig

    sequences, text = is_sequence_data(dataset, sequence_id), is_text_data(dataset)
    if hidden is None:
        hidden = "64,64" if sequences or text else "128,128"
    if samples is None:  # the paper's: 150 for its LSTM, 200 for its Transformer, 512 for its MLP
        samples = 150 if sequences else 200 if text else 512
    if beta is None:
        beta = 0.001 if text else 0.5
    if kl_warmup is None:
        kl_warmup = 2 if text else 10
    try:
        config = TrainConfig(
            kind=kind,
            hidden=parse_ints(hidden, "--hidden") or [],
            rank=rank,
            ranks=parse_ints(ranks, "--ranks"),
            prior=prior,
            members=members,
            dropout=dropout,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            beta=beta,
            kl_warmup_epochs=kl_warmup,
            **({"activation": Activation.GELU} if text else {}),
            patience=patience,
            class_weight=class_weight,
            default_samples=samples,
            target_fpr=target_fpr,
            seed=seed,
            device=device,
            warm_start=None if warm_start is None else str(warm_start),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        message = first["msg"].removeprefix("Value error, ")
        option = OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))
        raise typer.BadParameter(message, param_hint=option) from None
    with guard("train", "train", *(["data"] if dataset is not None else [])):
        data = load_training_data(
            dataset, csv, target, features, categorical, drop, ood_csv, seed, bounds, units, task,
            sequence_id, time, max_length,
        )  # fmt: skip
        if sequences:
            from app.train.sequence_pipeline import train_sequence_checkpoint as train_checkpoint
        elif text:
            from app.train.text_pipeline import MAX_LENGTH, train_text_checkpoint

            train_checkpoint = functools.partial(
                train_text_checkpoint, vocab_size=vocab_size, max_length=max_length or MAX_LENGTH
            )
        else:
            from app.train.pipeline import train_checkpoint

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("training", total=config.epochs)

            def on_epoch(log: object) -> None:
                progress.update(
                    task,
                    completed=log.epoch,  # type: ignore[attr-defined]
                    description=f"loss {log.loss:.4f}  nll {log.nll:.4f}  val nll {log.val_nll:.4f}",  # type: ignore[attr-defined]
                )

            def on_step(step: str) -> None:  # after the epochs: calibrating the gate, saving
                progress.update(task, description=escape(step))
                if not console.is_terminal:  # logs get a line per step, as from `steps`
                    errors.print(f"{step} …", markup=False, highlight=False)

            manifest, result = train_checkpoint(
                data, config, out, name=name, version=version, on_epoch=on_epoch, on_step=on_step
            )
            progress.update(task, description="trained, calibrated and saved")
    gate = manifest.gate
    console.print(
        f"saved [bold]{escape(str(out))}[/]: {manifest.kind.value}, {manifest.parameter_count:,} parameters, best "
        f"epoch {result.best_epoch}/{result.epochs_run}, val NLL {result.best_val_nll:.4f} "
        f"({result.duration_seconds:.1f} s on {result.device}); gate refers {gate.achieved['val'].not_accepted:.1%} "
        f"of validation and {gate.achieved['test'].not_accepted:.1%} of test rows at a {gate.target_fpr:.1%} budget"
    )
    for warning in gate.warnings:
        warn(warning)
    if evaluate:  # an MLP, a regression MLP, a sequence or a text checkpoint: _evaluate reads which from the manifest
        _evaluate(out, samples=None, seed=0, data_path=None, figures=True, command="train")


def _evaluate(
    model_dir: Path, samples: int | None, seed: int, data_path: str | None, figures: bool, command: str = "evaluate"
) -> None:
    from app.cli_report import print_evaluation

    with guard(command, "train") as extras:
        from app.checkpoint.io import load_checkpoint

        checkpoint = load_checkpoint(model_dir)
        extras += source_extras(checkpoint.manifest.data.source)
        manifest = checkpoint.manifest
        regression_mlp = manifest.sequence is None and manifest.task.type.value == "regression"
        with steps("evaluating") as on_step:
            on_step("loading the data")
            if manifest.sequence is not None or manifest.text is not None or regression_mlp:  # that report, card
                from app.data.dataset import load_dataset
                from app.data.rotten_tomatoes import load_text_dataset
                from app.data.sequence_table import load_sequence_dataset
                from app.evaluate import sequence_evaluate as sequences

                load = (
                    load_dataset
                    if regression_mlp
                    else load_text_dataset
                    if manifest.text is not None
                    else load_sequence_dataset
                )
                steps_data = load(manifest.data, data_path)
                # Scored once, for the metrics and the figures.
                scored_steps = sequences.score_sequence_sets(checkpoint, steps_data, samples, seed, on_step=on_step)
                result = sequences.evaluate_sequences(checkpoint, steps_data, scored=scored_steps, on_step=on_step)
                written = sequences.write_sequence_evaluation(
                    checkpoint, steps_data, result, figures=figures, scored=scored_steps, on_step=on_step
                )
            else:
                from app.data.dataset import load_dataset
                from app.evaluate.evaluate import evaluate as run_evaluation
                from app.evaluate.evaluate import score_sets, write_evaluation

                data = load_dataset(checkpoint.manifest.data, data_path)
                # Scored once, for the metrics and the figures.
                scored = score_sets(checkpoint, data, samples=samples, seed=seed, on_step=on_step)
                result = run_evaluation(checkpoint, data, scored=scored, on_step=on_step)
                written = write_evaluation(checkpoint, data, result, figures=figures, scored=scored, on_step=on_step)
    print_evaluation(console, checkpoint.manifest.name, seed, result)
    console.print(
        f"parameters: {checkpoint.manifest.parameter_count:,}; wrote " + ", ".join(p.name for p in written),
        markup=False,
    )


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder, e.g. models/flchain-mortality.")],
    samples: Annotated[int | None, typer.Option(help="Monte Carlo samples (default: the manifest's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weight samples.")] = 0,
    data: Annotated[str | None, typer.Option(help="Path of the training table if it moved (CSV models).")] = None,
    figures: Annotated[bool, typer.Option(help="Write reliability.png and ood_scores.png.")] = True,
) -> None:
    """Evaluate a checkpoint on its test split and OOD sets; write metrics.json, card.md and figures."""
    _evaluate(model_dir, samples, seed, data, figures)


app.command("compare")(compare)  # the comparison study lives in app.study


@app.command("bound")
def bound_command(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder of a lowrank, fullrank or rank1 model.")],
    twin: Annotated[
        Path | None, typer.Option(help="Trained deterministic checkpoint with the same layers: adds the rank bias.")
    ] = None,
    delta: Annotated[float, typer.Option(help="δ: the bound holds with probability ≥ 1 − δ.")] = 0.05,
    samples: Annotated[int, typer.Option(help="Posterior samples for the Gibbs empirical risk.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the posterior samples.")] = 0,
    data: Annotated[str | None, typer.Option(help="Path of the training table if it moved (CSV models).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the model card's Markdown section.")] = False,
) -> None:
    """PAC-Bayes (McAllester) bound on the training split: KL per layer by quadrature, complexity ratio,
    Gibbs empirical risk, the bound and whether it is vacuous; with --twin, the rank bias per layer."""
    from app.cli_report import print_bound

    with guard("bound", "train") as extras:
        from app.checkpoint.io import load_checkpoint

        checkpoint = load_checkpoint(model_dir)
        twin_checkpoint = None if twin is None else load_checkpoint(twin)
        extras += source_extras(checkpoint.manifest.data.source)
        from app.data.dataset import load_dataset
        from app.evaluate.bound import bound_report
        from app.evaluate.bound_markdown import render_bound_markdown

        with steps("bound") as on_step:
            on_step("loading the data")
            dataset = load_dataset(checkpoint.manifest.data, data)
            report = bound_report(
                checkpoint, dataset, twin=twin_checkpoint, delta=delta, samples=samples, seed=seed, on_step=on_step
            )
    if as_json:
        console.print_json(data=report.as_dict())
    elif markdown:
        console.print(render_bound_markdown(report), markup=False, highlight=False, soft_wrap=True)
    else:
        print_bound(console, report)


@app.command()
def info(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
) -> None:
    """Verify a checkpoint (format, hash, tensors) and print its summary."""
    from app.checkpoint.io import load_checkpoint
    from app.cli_report import print_info

    with guard("info"):
        checkpoint = load_checkpoint(model_dir)
    print_info(console, checkpoint.manifest)


@app.command("export-onnx")
def export_onnx_command(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    samples: Annotated[int | None, typer.Option(help="Weight samples in the graph (default: the manifest's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the frozen bank (the server's default bank seed is 0).")] = 0,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or higher: the lowest the dynamo exporter writes).")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest |onnxruntime − torch| accepted.")] = 1e-4,
) -> None:
    """Export the Monte Carlo predictive to ONNX, validated against torch: model.onnx (the frozen bank), for
    kinds with weight noise model-sampling.onnx (noise in, per-sample probabilities out), and for low-rank
    kinds model-local.onnx (local reparameterisation: per-row noise in, for seeded requests on a few rows)."""
    with guard("export-onnx", "onnx"):
        from app.checkpoint.io import load_checkpoint
        from app.checkpoint.onnx_export import export_onnx

        checkpoint = load_checkpoint(model_dir)
        report = export_onnx(checkpoint, samples=samples, seed=seed, opset=opset, tolerance=tolerance)
    info = report.info
    console.print(
        f"wrote [bold]{escape(str(report.path))}[/] ({info.bytes / 1e6:.1f} MB, opset {info.opset}, bank of "
        f"{info.samples} samples, seed {info.bank_seed}); onnxruntime {info.onnxruntime_version} matches torch within "
        f"{info.max_abs_diff:.2g} (tolerance {info.tolerance:g})"
    )
    if info.sampling is not None:
        console.print(
            f"wrote [bold]{escape(str(report.path.parent / info.sampling.file))}[/] "
            f"({info.sampling.bytes / 1e3:.0f} KB, {len(info.sampling.inputs)} noise inputs); matches torch on "
            f"shared noise within {info.sampling.max_abs_diff:.2g}"
        )
    elif (m := checkpoint.manifest).sequence is not None or m.text is not None or m.task.type.value == "regression":
        what = "sequence model" if m.sequence is not None else "text model" if m.text is not None else "regression MLP"
        console.print(f"no sampling graph: a {what} exports its frozen bank only")
    else:
        console.print(
            f"no sampling graph: a '{checkpoint.manifest.kind.value}' model has no weight noise (the "
            "bank graph serves it whole)"
        )
    if info.local is not None:
        console.print(
            f"wrote [bold]{escape(str(report.path.parent / info.local.file))}[/] "
            f"({info.local.bytes / 1e3:.0f} KB, local reparameterisation, sampler 'auto' on up to "
            f"{info.local.max_rows} rows); matches torch on shared noise within {info.local.max_abs_diff:.2g}"
        )


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
