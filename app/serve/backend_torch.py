"""The torch backend: the Monte Carlo engine (bank, fresh, local, adaptive) on the model's device."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from app.bnn.engine import EngineResult, MonteCarloEngine
from app.bnn.predictive import decompose
from app.bnn.spec import Sampler
from app.checkpoint.io import load_checkpoint
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.serve.backend import BackendKind, InferenceOptions, Scores


def _scores(result: EngineResult, seed: int) -> Scores:
    predictive = result.predictive
    u = decompose(predictive)
    return Scores(
        probs=predictive.mean.double().cpu().numpy(),
        total=u.total.cpu().numpy(),
        aleatoric=u.aleatoric.cpu().numpy(),
        epistemic=u.epistemic.cpu().numpy(),
        std=u.std.cpu().numpy(),
        samples=predictive.samples,
        seed=seed,
        sampler=result.sampler,
        mc_error=result.mc_error,
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
            options = InferenceOptions(samples=samples, seed=None if bank else 0, sampler=sampler)
            (scores,) = self.compute([(x, options)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({sampler.value}) is not finite")

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.engine.bank_size, self.engine.bank_seed) if self.engine.bank_size else None

    def num_samples(self, samples: int) -> int:
        return self.engine.model.num_samples(samples)

    def refuse(
        self, sampler: Sampler, samples: int, seed: int | None, tolerance: float | None
    ) -> tuple[str, str] | None:
        if sampler is Sampler.AUTO:
            return None
        # An adaptive request may name the bank whatever its cap: the bank's size then caps it.
        if tolerance is not None and sampler is Sampler.BANK:
            samples = min(samples, self.engine.bank_size)
        return self.engine.refuse(sampler, samples, seed)

    @torch.no_grad()
    def compute(self, jobs: list[tuple[np.ndarray, InferenceOptions]], batch_seed: int) -> list[Scores]:
        """One shared weight draw per (samples, seed) among ``fresh`` requests; the others run on their own."""
        engine, device = self.engine, self.device
        results: list[Scores | None] = [None] * len(jobs)
        shared: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (x_np, o) in enumerate(jobs):
            sampler, seed = engine.resolve(
                o.sampler, x_np.shape[0], o.samples, o.seed, batch_seed, o.tolerance is not None
            )
            x = torch.from_numpy(x_np).to(device)
            if o.tolerance is not None:
                results[index] = _scores(engine.run_adaptive(x, seed, o.tolerance, o.samples, sampler=sampler), seed)
            elif sampler is Sampler.FRESH:
                shared[(engine.model.num_samples(o.samples), seed)].append(index)
            else:
                results[index] = _scores(engine.run(x, o.samples, seed, sampler), seed)
        for (samples, seed), members in shared.items():
            weights = engine.model.sample(samples, torch.Generator(device=device).manual_seed(seed))
            for index in members:
                x = torch.from_numpy(jobs[index][0]).to(device)
                results[index] = _scores(engine.evaluate(x, weights), seed)
        return [r for r in results if r is not None]
