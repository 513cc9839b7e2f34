"""NUTS on the singular posterior (``sbnn mcmc``): a small low-rank MLP and its full-rank twin sampled with
Pyro's NUTS on a few hundred flchain rows, chains compared on identifiable quantities, and the predictive
against variational inference (sbnn's own low-rank training) on the same rows.

Every network here has one hidden ReLU layer; the VI run is ``sbnn train``'s pipeline with a Gaussian prior of
std 1 on the factors (the NUTS prior), β = 1 (the plain ELBO) and its preprocessing, which the NUTS inputs use
too. Chains run one after another in this process (one torch thread each), from seeds ``seed``, ``seed + 1``...
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.mcmc.diagnostics import convergence, identifiable_quantities
from app.mcmc.model import MCMCNetwork


@dataclass(frozen=True)
class MCMCPlan:
    """The run: ``rows`` training rows of flchain (``val_rows`` for VI's early stopping), ``test_rows`` held out
    and up to ``ood_rows`` per OOD set; the network (``hidden`` units, ``rank``); ``chains`` × (``warmup`` +
    ``samples``) NUTS iterations per kind; ``vi_samples`` Monte Carlo draws of the VI predictive."""

    rows: int = 400
    val_rows: int = 300
    test_rows: int = 1000
    ood_rows: int = 500
    hidden: int = 16
    rank: int = 2
    chains: int = 4
    warmup: int = 200
    samples: int = 200
    max_tree_depth: int = 7
    vi_epochs: int = 300
    vi_samples: int = 1000
    seed: int = 0


def _subset(split: Any, rows: int, rng: np.random.Generator) -> Any:
    from app.data.dataset import Split

    chosen = np.sort(rng.choice(len(split.y), size=min(rows, len(split.y)), replace=False))
    changed = None if split.changed is None else split.changed[chosen]
    return Split(frame=split.frame.iloc[chosen].reset_index(drop=True), y=split.y[chosen], changed=changed)


def small_flchain(plan: MCMCPlan) -> Any:
    """flchain with ``plan.rows`` training rows and the other splits cut to the plan's sizes (seeded)."""
    from app.data.flchain import load_flchain

    dataset = load_flchain(seed=0)
    rng = np.random.default_rng(plan.seed)
    return dataclasses.replace(
        dataset,
        train=_subset(dataset.train, plan.rows, rng),
        val=_subset(dataset.val, plan.val_rows, rng),
        test=_subset(dataset.test, plan.test_rows, rng),
        ood={name: _subset(split, plan.ood_rows, rng) for name, split in dataset.ood.items()},
    )


def run_nuts(network: MCMCNetwork, x: torch.Tensor, y: torch.Tensor, plan: MCMCPlan) -> dict[str, Any]:
    """``plan.chains`` NUTS chains -> {"by_chain": {site: (C, D, ...)}, "seconds", "divergences" per chain}."""
    import pyro
    from pyro.infer import MCMC, NUTS

    chains, divergences, started = [], [], time.perf_counter()
    for chain in range(plan.chains):
        pyro.set_rng_seed(plan.seed + chain)
        pyro.clear_param_store()
        kernel = NUTS(network, max_tree_depth=plan.max_tree_depth, jit_compile=True, ignore_jit_warnings=True)
        mcmc = MCMC(kernel, num_samples=plan.samples, warmup_steps=plan.warmup, num_chains=1, disable_progbar=True)
        mcmc.run(x, y)
        chains.append(mcmc.get_samples())
        divergences.append(len(mcmc.diagnostics()["divergences"]["chain 0"]))
    by_chain = {site: torch.stack([c[site] for c in chains]) for site in chains[0]}
    return {"by_chain": by_chain, "seconds": time.perf_counter() - started, "divergences": divergences}


def predictive_scores(probs_samples: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Per-draw P(died) (S, N) and the 0/1 labels -> NLL, ECE, accuracy and AUROC of the predictive."""
    from app.evaluate.metrics import classification_metrics

    p = probs_samples.double().mean(0).numpy()
    probs = np.stack([1.0 - p, p], axis=1)
    found = classification_metrics(labels, probs)
    return {k: round(float(found[k]), 4) for k in ("nll", "ece", "accuracy", "auroc")}


def uncertainty(probs_samples: torch.Tensor) -> dict[str, np.ndarray]:
    """(S, N) P(died) -> per-row mutual information and total entropy (nats), the OOD scores compared."""
    from app.bnn.predictive import Predictive, decompose

    p = probs_samples.double()
    u = decompose(Predictive(torch.stack([1.0 - p, p], dim=-1)))
    return {"mutual_information": u.epistemic.numpy(), "total_entropy": u.total.numpy()}


def ood_aurocs(test: torch.Tensor, ood: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per OOD set and score: AUROC of the OOD rows against the test rows (probabilities (S, N) each)."""
    from app.evaluate.metrics import ood_metrics

    reference = uncertainty(test)
    return {
        name: {
            score: round(ood_metrics(reference[score], values).auroc, 4) for score, values in uncertainty(probs).items()
        }
        for name, probs in ood.items()
    }


def _vi(dataset: Any, plan: MCMCPlan, folder: Path) -> tuple[Any, Any]:
    """Train the VI twin with sbnn's pipeline -> (its checkpoint, its training record)."""
    from app.bnn.spec import LayerKind, PriorKind
    from app.checkpoint.io import load_checkpoint
    from app.train.config import TrainConfig
    from app.train.pipeline import train_checkpoint

    config = TrainConfig(
        kind=LayerKind.LOWRANK,
        hidden=[plan.hidden],
        rank=plan.rank,
        prior=PriorKind.GAUSSIAN,
        beta=1.0,
        epochs=plan.vi_epochs,
        kl_warmup_epochs=min(10, plan.vi_epochs),
        patience=max(1, min(40, plan.vi_epochs)),
        default_samples=plan.vi_samples,
        seed=plan.seed,
        device="cpu",
    )
    _, trained = train_checkpoint(dataset, config, folder)
    return load_checkpoint(folder), trained


def run_mcmc_study(plan: MCMCPlan) -> dict[str, Any]:
    """The whole comparison -> a JSON-able result (see docs/results.md, "MCMC on the singular posterior")."""
    from app.bnn.predictive import predict

    torch.set_num_threads(1)
    dataset = small_flchain(plan)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint, trained = _vi(dataset, plan, Path(folder))
    prep = checkpoint.manifest.preprocessing

    def features(split: Any) -> torch.Tensor:
        return torch.as_tensor(prep.transform(split.frame), dtype=torch.float32)

    x, y = features(dataset.train), torch.as_tensor(dataset.train.y, dtype=torch.float32)
    x_test = features(dataset.test)
    ood_x = {name: features(split) for name, split in dataset.ood.items()}

    def vi_probs(rows: torch.Tensor) -> torch.Tensor:
        return predict(checkpoint.model, rows, plan.vi_samples, torch.Generator().manual_seed(plan.seed)).probs[..., 1]

    vi_test = vi_probs(x_test)
    result: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "rows": {"train": len(dataset.train.y), "test": len(dataset.test.y)}
        | {f"ood:{k}": len(v.y) for k, v in dataset.ood.items()},
        "vi": {
            "seconds": round(time.perf_counter() - started, 1),
            "epochs_run": trained.epochs_run,
            "test": predictive_scores(vi_test, dataset.test.y),
            "ood_auroc": ood_aurocs(vi_test, {k: vi_probs(v) for k, v in ood_x.items()}),
        },
    }
    for label, low_rank in (("nuts_lowrank", True), ("nuts_fullrank", False)):
        network = MCMCNetwork(x.shape[1], plan.hidden, plan.rank, low_rank=low_rank)
        run = run_nuts(network, x, y, plan)
        by_chain = run["by_chain"]
        groups = identifiable_quantities(network, by_chain, x_test)
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in by_chain.items()}
        probs = groups["held-out probabilities"].reshape(-1, x_test.shape[0])  # (C·D, N), chains in order
        result[label] = {
            "seconds": round(run["seconds"], 1),
            "divergences": run["divergences"],
            "convergence": {name: convergence(draws).as_dict() for name, draws in groups.items()},
            "test": predictive_scores(probs, dataset.test.y),
            "ood_auroc": ood_aurocs(probs, {k: torch.sigmoid(network.logits(flat, v)) for k, v in ood_x.items()}),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
