"""The torch backend: the Monte Carlo engine (bank, fresh, local, adaptive) on the model's device."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from app.bnn.engine import MonteCarloEngine, monte_carlo_error
from app.bnn.plan import Plan
from app.bnn.predictive import Predictive, decompose
from app.bnn.spec import Sampler
from app.checkpoint.io import load_checkpoint
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.serve.backend import BackendKind, Scores


def _scores(predictive: Predictive, plan: Plan) -> Scores:
    u = decompose(predictive)
    return Scores(
        plan=plan,
        probs=predictive.mean.double().cpu().numpy(),
        total=u.total.cpu().numpy(),
        aleatoric=u.aleatoric.cpu().numpy(),
        epistemic=u.epistemic.cpu().numpy(),
        std=u.std.cpu().numpy(),
        mc_error=monte_carlo_error(predictive),
    )


class TorchBackend:
    kind = BackendKind.TORCH

    def __init__(self, manifest: Manifest, engine: MonteCarloEngine, device: torch.device) -> None:
        self.manifest = manifest
        self.engine = engine
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: torch.device, bank_samples: int | None, bank_seed: int) -> TorchBackend:
        """Verify and load the checkpoint, build its engine (and bank), run every sampler once."""
        checkpoint = load_checkpoint(folder, device=device)
        manifest = checkpoint.manifest
        bank = manifest.default_samples if bank_samples is None else bank_samples
        backend = cls(manifest, MonteCarloEngine(checkpoint.model, bank_size=bank, bank_seed=bank_seed), device)
        backend.warm_up(folder)
        return backend

    def warm_up(self, folder: Path) -> None:
        x = self.manifest.preprocessing.typical_input()
        for sampler in self.engine.warm_up_samplers():
            bank = sampler is Sampler.BANK
            samples = self.engine.bank_size if bank else self.manifest.default_samples
            plan = self.plan(sampler, 1, samples, None if bank else 0, None)
            (scores,) = self.compute([(x, plan)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({sampler.value}) is not finite")

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.engine.bank_size, self.engine.bank_seed) if self.engine.bank_size else None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        return self.engine.plan(sampler, rows, samples, seed, tolerance)

    @torch.no_grad()
    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        """One shared weight draw per (samples, seed) among ``fresh`` plans; the others run on their own."""
        engine, device = self.engine, self.device
        results: list[Scores | None] = [None] * len(jobs)
        shared: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (x_np, planned) in enumerate(jobs):
            plan = planned.seeded(batch_seed)
            if plan.sampler is Sampler.FRESH and plan.tolerance is None:
                shared[(plan.samples, plan.seed)].append(index)  # type: ignore[index]
                continue
            result = engine.execute(torch.from_numpy(x_np).to(device), plan)
            results[index] = _scores(result.predictive, result.plan)
        for (samples, seed), members in shared.items():
            weights = engine.model.sample(samples, torch.Generator(device=device).manual_seed(seed))
            for index in members:
                x = torch.from_numpy(jobs[index][0]).to(device)
                results[index] = _scores(engine.evaluate(x, weights), jobs[index][1].seeded(batch_seed))
        return [r for r in results if r is not None]
