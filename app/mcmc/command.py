"""The ``sbnn mcmc`` command: NUTS on a small low-rank network and its full-rank twin, against VI
(:mod:`app.mcmc.study`); writes OUT/mcmc.json and OUT/mcmc.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli_options import console, guard


def mcmc(
    out: Annotated[Path, typer.Option(help="Folder for mcmc.json and mcmc.md.")] = Path("bench/results"),
    rows: Annotated[int, typer.Option(min=20, help="flchain training rows.")] = 400,
    hidden: Annotated[int, typer.Option(min=1, help="Hidden ReLU units.")] = 16,
    rank: Annotated[int, typer.Option(min=1, help="Rank of the low-rank layers.")] = 2,
    chains: Annotated[int, typer.Option(min=2, help="NUTS chains per kind (R-hat needs two or more).")] = 4,
    warmup: Annotated[int, typer.Option(min=1, help="NUTS warm-up iterations per chain.")] = 200,
    samples: Annotated[int, typer.Option(min=4, help="NUTS draws kept per chain.")] = 200,
    max_tree_depth: Annotated[int, typer.Option(min=1, max=12, help="NUTS's maximum tree depth.")] = 7,
    vi_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the VI twin.")] = 300,
    seed: Annotated[int, typer.Option(help="Data subset, VI and the first chain's seed.")] = 0,
) -> None:
    """Sample the posterior of a small low-rank MLP (and its full-rank twin) on flchain with NUTS, check the
    chains on W, its singular values and held-out predictions as well as the raw factors, and compare the
    predictive with sbnn's variational training on the same rows (needs the `mcmc`, `train` and `data`
    extras)."""
    with guard("mcmc", "mcmc", "train", "data"):
        from app.mcmc.report import mcmc_markdown
        from app.mcmc.study import MCMCPlan, run_mcmc_study

        plan = MCMCPlan(
            rows=rows,
            hidden=hidden,
            rank=rank,
            chains=chains,
            warmup=warmup,
            samples=samples,
            max_tree_depth=max_tree_depth,
            vi_epochs=vi_epochs,
            seed=seed,
        )
        result = run_mcmc_study(plan)
        command = (
            f"sbnn mcmc --rows {rows} --hidden {hidden} --rank {rank} --chains {chains} --warmup {warmup}"
            f" --samples {samples} --max-tree-depth {max_tree_depth} --vi-epochs {vi_epochs} --seed {seed}"
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "mcmc.json").write_text(json.dumps(result, indent=2) + "\n")
        report = mcmc_markdown(result, command)
        (out / "mcmc.md").write_text(report)
        console.print(report)
