"""The ``sbnn`` command line: train, evaluate and inspect checkpoints.

Heavy imports happen inside each command, so ``sbnn --help`` is instant and the serving install does not
need the training extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.bnn.spec import LayerKind, PriorKind
from app.errors import SbnnError
from app.train.config import ClassWeight

app = typer.Typer(
    name="sbnn",
    help="Singular (low-rank) Bayesian neural networks: train, evaluate and serve uncertainty scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _bounds(text: str | None) -> dict[str, object] | None:
    """``age=0:120,creatinine=0:30`` (a side may be empty: ``kappa=0:``) -> {feature: PlausibleRange}."""
    if text is None:
        return None
    from pydantic import ValidationError

    from app.data.schema import PlausibleRange

    bounds: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, span = part.partition("=")
        low, colon, high = span.partition(":")
        if not name or not colon:
            raise typer.BadParameter(f"expected feature=low:high, got {part!r}", param_hint="--bounds")
        try:
            bounds[name.strip()] = PlausibleRange(
                low=float(low) if low.strip() else None, high=float(high) if high.strip() else None
            )
        except (ValueError, ValidationError) as exc:
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise typer.BadParameter(f"{part!r}: {message}", param_hint="--bounds") from None
    return bounds


def _units(text: str | None) -> dict[str, str] | None:
    """``age=years,creatinine=mg/dL`` -> {feature: unit}."""
    if text is None:
        return None
    units = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, equals, unit = part.partition("=")
        if not name.strip() or not equals or not unit.strip():
            raise typer.BadParameter(f"expected feature=unit, got {part!r}", param_hint="--units")
        units[name.strip()] = unit.strip()
    return units


def _threshold(value: float | None) -> str:
    return "never" if value is None else f"{value:.4g}"


def _fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=2)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write, e.g. models/<name>.")],
    kind: Annotated[LayerKind, typer.Option(help="Layer kind.")] = LayerKind.LOWRANK,
    rank: Annotated[int, typer.Option(help="Rank of the hidden layers (capped at min(m, n)); output rank 1.")] = 15,
    ranks: Annotated[str | None, typer.Option(help="Explicit rank per layer, e.g. '9,15,1' (lowrank).")] = None,
    hidden: Annotated[str, typer.Option(help="Hidden layer widths.")] = "128,128",
    dataset: Annotated[str | None, typer.Option(help="Bundled data set: 'flchain' (needs sbnn[data]).")] = None,
    csv: Annotated[Path | None, typer.Option(help="Your own table (CSV or Parquet) instead of --dataset.")] = None,
    target: Annotated[str | None, typer.Option(help="Target column of --csv.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature columns of --csv (default: all but target).")] = None,
    categorical: Annotated[str | None, typer.Option(help="Numeric-looking columns to treat as categories.")] = None,
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
            help="Units of --csv features, e.g. 'age=years,creatinine=mg/dL' (the stress suite converts them)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the folder name).")] = None,
    version: Annotated[str, typer.Option(help="Model version string.")] = "1",
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    beta: Annotated[float, typer.Option(help="KL weight (1 = plain ELBO).")] = 0.5,
    kl_warmup: Annotated[int, typer.Option(help="Epochs of linear KL annealing.")] = 10,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 20,
    class_weight: Annotated[ClassWeight, typer.Option(help="Likelihood weighting of classes.")] = ClassWeight.NONE,
    prior: Annotated[PriorKind, typer.Option(help="Prior on factor entries.")] = PriorKind.MIXTURE,
    members: Annotated[int, typer.Option(help="Ensemble members (kind ensemble).")] = 5,
    dropout: Annotated[float, typer.Option(help="Dropout rate (kind mcdropout).")] = 0.1,
    samples: Annotated[int, typer.Option(help="Default Monte Carlo samples at test time.")] = 512,
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

    from app.train.config import TrainConfig
    from app.train.pipeline import train_checkpoint

    try:
        config = TrainConfig(
            kind=kind,
            hidden=_ints(hidden, "--hidden") or [],
            rank=rank,
            ranks=_ints(ranks, "--ranks"),
            prior=prior,
            members=members,
            dropout=dropout,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            beta=beta,
            kl_warmup_epochs=kl_warmup,
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
        raise typer.BadParameter(first["msg"], param_hint="--" + str(first["loc"][0]).replace("_", "-")) from None
    try:
        data = _load_training_data(dataset, csv, target, features, categorical, ood_csv, seed, bounds, units)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("training", total=config.epochs)

            def on_epoch(log: object) -> None:
                progress.update(
                    task,
                    completed=log.epoch,  # type: ignore[attr-defined]
                    description=f"loss {log.loss:.4f}  nll {log.nll:.4f}  val nll {log.val_nll:.4f}",  # type: ignore[attr-defined]
                )

            manifest, result = train_checkpoint(data, config, out, name=name, version=version, on_epoch=on_epoch)
    except (SbnnError, ValueError) as exc:
        _fail(exc)
    gate = manifest.gate
    console.print(
        f"saved [bold]{out}[/]: {manifest.kind.value}, {manifest.parameter_count:,} parameters, best epoch "
        f"{result.best_epoch}/{result.epochs_run}, val NLL {result.best_val_nll:.4f} ({result.duration_seconds:.1f} s "
        f"on {result.device}); gate refers {gate.achieved['val'].not_accepted:.1%} of validation and "
        f"{gate.achieved['test'].not_accepted:.1%} of test rows at a {gate.target_fpr:.1%} budget"
    )
    for warning in gate.warnings:
        errors.print(f"[bold red]warning:[/] [bold]{warning}[/]")
    if evaluate:
        _evaluate(out, samples=None, seed=0, data_path=None, figures=True)


def _load_training_data(
    dataset: str | None,
    csv: Path | None,
    target: str | None,
    features: str | None,
    categorical: str | None,
    ood_csv: Path | None,
    seed: int,
    bounds: str | None = None,
    units: str | None = None,
):  # noqa: ANN202 - returns TabularDataset, imported lazily
    if (dataset is None) == (csv is None):
        raise typer.BadParameter("give exactly one of --dataset flchain or --csv PATH", param_hint="--dataset")
    if dataset is not None:
        if bounds is not None or units is not None:
            raise typer.BadParameter(
                "--bounds and --units are for --csv tables (flchain has its own)", param_hint="--bounds"
            )
        if dataset != "flchain":
            raise typer.BadParameter(f"unknown data set {dataset!r}; available: flchain", param_hint="--dataset")
        from app.data.flchain import load_flchain

        return load_flchain(seed)
    if target is None:
        raise typer.BadParameter("--csv needs --target", param_hint="--target")
    from app.data.tabular import load_table

    return load_table(
        csv,
        target,
        _names(features),
        _names(categorical),
        ood_csv,
        seed=seed,
        plausible=_bounds(bounds),
        units=_units(units),
    )


def _evaluate(model_dir: Path, samples: int | None, seed: int, data_path: str | None, figures: bool) -> None:
    from app.checkpoint.io import load_checkpoint
    from app.data.dataset import load_dataset
    from app.evaluate.evaluate import evaluate as run_evaluation
    from app.evaluate.evaluate import score_sets, write_evaluation

    try:
        checkpoint = load_checkpoint(model_dir)
        data = load_dataset(checkpoint.manifest.data, data_path)
        scored = score_sets(checkpoint, data, samples=samples, seed=seed)  # once, for metrics and figures
        result = run_evaluation(checkpoint, data, scored=scored)
        written = write_evaluation(checkpoint, data, result, figures=figures, scored=scored)
    except (SbnnError, ValueError) as exc:
        _fail(exc)
    test = result["test"]
    table = Table(title=f"{checkpoint.manifest.name}: test split ({result['samples']} samples, seed {seed})")
    for column in ("AUROC", "AUPRC", "accuracy", "NLL", "Brier", "ECE", "rows"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{test[k]:.3f}" for k in ("auroc", "auprc", "accuracy", "nll", "brier", "ece")), str(test["n"]))
    console.print(table)
    gate = result["gate"]
    rates = gate["test"]
    console.print(
        f"gate on the test split: {rates['not_accepted']:.1%} not accepted at a {gate['target_fpr']:.1%} budget "
        f"(support {rates['support']:.1%}, density {rates['density']:.1%}, epistemic {rates['epistemic']:.1%})"
    )
    for title, reports in (("OOD sets", gate["ood"]), ("stress suite", gate["stress"])):
        ood = Table(title=f"The gate on the {title}: AUROC vs the test split, and share not accepted")
        for column in ("set", "rows", "support", "density", "epistemic", "gate", "not accepted", "rejected"):
            ood.add_column(column, justify="right")
        for set_name, entry in reports.items():
            auroc = entry["auroc"]
            ood.add_row(
                set_name,
                str(entry["rows"]),
                *(f"{auroc[k]:.3f}" for k in ("support", "density", "epistemic", "gate")),
                f"{entry['not_accepted']:.1%}",
                f"{entry['rejected']:.1%}",
            )
        console.print(ood)
    for warning in gate["warnings"]:
        errors.print(f"[bold red]warning:[/] [bold]{warning}[/]")
    console.print(f"parameters: {checkpoint.manifest.parameter_count:,}; wrote " + ", ".join(p.name for p in written))


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


@app.command()
def compare(
    out: Annotated[
        Path | None, typer.Option(help="Runs folder [default: runs/compare; quick: runs/compare-quick].")
    ] = None,
    docs: Annotated[
        Path | None, typer.Option(help="Where results.md and results/ go [default: docs; quick: OUT/docs].")
    ] = None,
    models: Annotated[
        Path | None, typer.Option(help="Where the best model of each kind goes [default: models; quick: OUT/models].")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Training seeds 0..N-1 [default: 3; quick: 2].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs of every run [default: 200; quick: 30].")] = None,
    skip_ablation: Annotated[bool, typer.Option(help="Skip the rank ablation.")] = False,
    quick: Annotated[bool, typer.Option(help="Smoke test of the pipeline: fewer seeds, epochs and samples.")] = False,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads; 1 keeps timings comparable (the networks are small).")
    ] = 1,
) -> None:
    """Train every kind on flchain with the same budget over several seeds (resumable), then write
    docs/results.md with tables, claims and figures, and save the best model of each kind."""
    import time

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.data.flchain import load_flchain
    from app.evaluate.compare import RichReporter, make_plan, run_comparison
    from app.evaluate.results import command_line, write_results

    if threads < 1:
        raise typer.BadParameter(f"must be ≥ 1, got {threads}", param_hint="--threads")
    torch.set_num_threads(threads)
    out = out or Path("runs/compare-quick" if quick else "runs/compare")
    docs = docs or (out / "docs" if quick else Path("docs"))
    models = models or (out / "models" if quick else Path("models"))
    started = time.perf_counter()
    try:
        plan = make_plan(seeds=seeds, epochs=epochs, ablation=not skip_ablation, quick=quick)
        # The bundled model's split (seed 0) for every run: only the training seed varies.
        dataset = load_flchain(seed=0)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            outcomes = run_comparison(plan, dataset, out, ablation=not skip_ablation, reporter=RichReporter(progress))
        console.print("measuring inference times, drawing figures, saving the best model of each kind …")
        report = write_results(plan, dataset, out, docs, models, command_line(), ablation=not skip_ablation)
    except (SbnnError, ValueError) as exc:
        _fail(exc)
    trained = sum(o.trained for o in outcomes)
    console.print(
        f"{trained} of {len(outcomes)} runs trained now ({len(outcomes) - trained} done before); wrote "
        f"[bold]{docs / 'results.md'}[/] and {len(report['models'])} models under {models} in "
        f"{time.perf_counter() - started:.0f} s"
    )
    for claim in report["claims"]:
        console.print(f"  {claim['verdict']:<14} {claim['statement']}")


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
    from app.checkpoint.io import load_checkpoint
    from app.data.dataset import load_dataset
    from app.evaluate.bound import bound_report, render_bound_markdown

    try:
        checkpoint = load_checkpoint(model_dir)
        twin_checkpoint = None if twin is None else load_checkpoint(twin)
        dataset = load_dataset(checkpoint.manifest.data, data)
        report = bound_report(checkpoint, dataset, twin=twin_checkpoint, delta=delta, samples=samples, seed=seed)
    except (SbnnError, ValueError) as exc:
        _fail(exc)
    if as_json:
        console.print_json(data=report.as_dict())
        return
    if markdown:
        console.print(render_bound_markdown(report), markup=False, highlight=False, soft_wrap=True)
        return
    layers = Table(title=f"{report.model} ({report.kind}): KL per layer, prior {report.prior}")
    # Factor entries: r(m+n) lowrank, mn fullrank, m+n for rank1's scales.
    columns = ["layer", "m × n", "rank", "factor entries", "mn", "√(factors/mn)", "KL (nats)", "quad. error"]
    if report.has_twin:
        columns += ["σ>r", "energy kept", "‖μ_Aμ_Bᵀ − W*_r‖"]
    for column in columns:
        layers.add_column(column, justify="right")
    for layer in report.layers:
        m, n = layer.shape
        cells = [
            str(layer.index),
            f"{m} × {n}",
            "-" if layer.rank is None else str(layer.rank),
            f"{layer.factor_parameters:,}",
            f"{layer.dense_parameters:,}",
            f"{layer.complexity_ratio:.3f}",
            f"{layer.kl:,.1f}",
            f"{layer.kl_error:.1e}",
        ]
        if report.has_twin:
            cells += [
                "-" if v is None else f"{v:.4g}" for v in (layer.rank_bias, layer.retained_energy, layer.learning_error)
            ]
        layers.add_row(*cells)
    console.print(layers)
    summary = Table(title=f"McAllester bound, δ = {report.delta:g}", show_header=False)
    summary.add_row("N (training rows)", f"{report.rows:,}")
    summary.add_row(
        "KL(Q‖P)", f"{report.kl:,.1f} nats (quadrature, {report.points} nodes, error {report.kl_error:.1e})"
    )
    summary.add_row(
        "Gibbs 0–1 risk L̂",
        f"{report.gibbs_risk:.4f} ± {report.gibbs_risk_std_error:.1e} ({report.samples} samples, seed {report.seed})",
    )
    summary.add_row("majority-class error", f"{report.majority_error:.4f}")
    summary.add_row("ln(2√N/δ)", f"{report.confidence_term:.3f}")
    summary.add_row("sqrt((KL + ln(2√N/δ))/(2N))", f"{report.complexity:.4f}")
    summary.add_row("bound", f"{report.bound:.4f}")
    summary.add_row("KL for a bound below 1", f"≤ {report.kl_max:,.1f} nats")
    console.print(summary)
    status = "[bold red]vacuous[/] (bound ≥ 1)" if report.vacuous else "[bold green]non-vacuous[/] (bound < 1)"
    console.print(f"status: {status}")
    if report.caveat:
        console.print(f"caveat: {report.caveat}")


@app.command()
def info(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
) -> None:
    """Verify a checkpoint (format, hash, tensors) and print its summary."""
    from app.checkpoint.io import load_checkpoint

    try:
        checkpoint = load_checkpoint(model_dir)
    except SbnnError as exc:
        _fail(exc)
    m = checkpoint.manifest
    table = Table(title=f"{m.name} (version {m.version}): verified", show_header=False)
    table.add_row("kind", m.kind.value)
    table.add_row("network", " → ".join(map(str, [m.network.in_features, *m.network.hidden, m.network.out_features])))
    table.add_row("ranks", str(m.ranks))
    table.add_row("parameters", f"{m.parameter_count:,}")
    table.add_row("features", ", ".join(f.name for f in m.features))
    table.add_row("labels", ", ".join(m.task.labels))
    gate = m.gate
    table.add_row(
        "OOD gate",
        f"budget {gate.target_fpr:.1%}; refers {gate.achieved['val'].not_accepted:.1%} of validation, "
        + (f"{gate.achieved['test'].not_accepted:.1%} of test; " if "test" in gate.achieved else "")
        + f"density > {_threshold(gate.density.threshold)}, mutual information > "
        f"{_threshold(gate.epistemic.threshold)} nats",
    )
    bounded = [f"{f.name} {f.plausible}" for f in m.features if f.plausible is not None]
    table.add_row("plausible bounds", ", ".join(bounded) or "none")
    table.add_row("default samples", str(m.default_samples))
    table.add_row("weights sha256", m.weights.sha256)
    if m.metrics:
        table.add_row("test AUROC", f"{m.metrics['test']['auroc']:.3f}")
    console.print(table)


@app.command("export-onnx")
def export_onnx_command(
    model_dir: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    samples: Annotated[int | None, typer.Option(help="Weight samples in the graph (default: the manifest's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the frozen bank (the server's default bank seed is 0).")] = 0,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    tolerance: Annotated[float, typer.Option(help="Largest |onnxruntime − torch| accepted.")] = 1e-4,
) -> None:
    """Export the Monte Carlo predictive to ONNX, validated against torch: model.onnx (the frozen bank) and,
    for kinds with weight noise, model-sampling.onnx (noise in, per-sample probabilities out)."""
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.onnx_export import export_onnx

    try:
        checkpoint = load_checkpoint(model_dir)
        report = export_onnx(checkpoint, samples=samples, seed=seed, opset=opset, tolerance=tolerance)
    except SbnnError as exc:
        _fail(exc)
    info = report.info
    console.print(
        f"wrote [bold]{report.path}[/] ({info.bytes / 1e6:.1f} MB, opset {info.opset}, bank of {info.samples} "
        f"samples, seed {info.bank_seed}); onnxruntime {info.onnxruntime_version} matches torch within "
        f"{info.max_abs_diff:.2g} (tolerance {info.tolerance:g})"
    )
    if info.sampling is not None:
        console.print(
            f"wrote [bold]{report.path.parent / info.sampling.file}[/] ({info.sampling.bytes / 1e3:.0f} KB, "
            f"{len(info.sampling.inputs)} noise inputs); matches torch on shared noise within "
            f"{info.sampling.max_abs_diff:.2g}"
        )
    else:
        console.print(
            f"no sampling graph: a '{checkpoint.manifest.kind.value}' model has no weight noise (the "
            "bank graph serves it whole)"
        )


@app.command()
def serve(
    models: Annotated[
        Path | None, typer.Option(help="Model repository folder (env SBNN_MODELS, default models).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (env SBNN_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SBNN_PORT, default 8000).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (env SBNN_DEVICE, default auto).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="torch, onnx (exported bank, no torch) or auto (env SBNN_BACKEND).")
    ] = None,
) -> None:
    """Serve every checkpoint under the model folder: REST /v1, Open Inference Protocol /v2, /metrics."""
    import uvicorn
    from pydantic import ValidationError

    from app.serve.app import create_app
    from app.serve.settings import Settings

    given = {"models": models, "host": host, "port": port, "device": device, "backend": backend}
    overrides = {k: v for k, v in given.items() if v}
    try:
        settings = Settings(**overrides)
        application = create_app(settings)
    except (ValidationError, ValueError) as exc:
        _fail(exc)
    # One worker process: metrics and drift windows live in this process (see docs/serving.md).
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
