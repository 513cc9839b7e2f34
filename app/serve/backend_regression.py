"""The torch backend of regression MLPs: a frozen ``bank`` and ``fresh`` draws, answered in the target's unit.

The classifier engine (app.bnn.engine) is built around class probabilities (its local reparameterisation,
adaptive sampling and Monte Carlo errors), so a Gaussian-likelihood MLP runs here instead: one weight draw
(the bank, drawn at load as training's ``RegressionBankScorer`` drew the one the gate was calibrated on, or
``model.sample(S, Generator(seed))`` for fresh), rows in blocks, then ``regression_scores``: the mixture's mean,
variances and central intervals (app.serve.backend_sequence). ``local`` and adaptive sampling are refused with
why; every request runs on its own, so a seed replays it bitwise whoever ran beside it.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from app.bnn._base import LayerSample, place
from app.bnn.fused import slice_samples
from app.bnn.network import BayesianMLP
from app.bnn.plan import Plan, PlanRefused, bank_or_fresh, run_to_end
from app.bnn.spec import Sampler
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.serve.backend import AnyScores, BackendKind, Cost, ModelInput, seconds_per_row_sample
from app.serve.backend_sequence import regression_scores
from app.serve.backend_torch import intra_op_threads, pass_threads

BLOCK_FLOATS = 1 << 24  # floats of one block's widest activations (S, rows, width): rows per block follow


class RegressionTorchBackend:
    kind = BackendKind.TORCH

    def __init__(self, manifest: Manifest, model: BayesianMLP, device: torch.device, bank: int, seed: int) -> None:
        self.manifest = manifest
        self.model = model
        self.device = device
        scale = manifest.task.scale
        self.target = (0.0, 1.0) if scale is None else (scale.mean, scale.std)
        self.bank_size = model.num_samples(bank) if bank else 0
        self.bank_seed = seed
        self._bank: list[LayerSample] | None = None
        if self.bank_size:
            with torch.no_grad():
                self._bank = model.sample(self.bank_size, torch.Generator(device=device).manual_seed(seed))
        self.widest = max(m for _, m in manifest.network.layer_shapes())
        self.threads = torch.get_num_threads()
        self.seconds_per_row_sample: dict[Sampler, float] = {}

    @classmethod
    def from_checkpoint(
        cls, folder: Path, manifest: Manifest, model: BayesianMLP, device: torch.device, bank: int, bank_seed: int
    ) -> RegressionTorchBackend:
        """The backend of a loaded regression MLP, its bank drawn, each sampler run once and its rate timed."""
        backend = cls(manifest, model, device, bank, bank_seed)
        x = manifest.preprocessing.typical_input()
        for sampler in (Sampler.BANK, Sampler.FRESH) if backend.bank_size else (Sampler.FRESH,):
            bank_plan = sampler is Sampler.BANK
            samples = backend.bank_size if bank_plan else manifest.default_samples
            plan = backend.plan(sampler, 1, samples, None if bank_plan else 0, None)
            (scores,) = backend.compute([(x, plan)], batch_seed=0)
            if not np.isfinite(scores.total).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({sampler.value}) is not finite")
            backend.seconds_per_row_sample[sampler] = seconds_per_row_sample(backend, x, plan)
        return backend

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.bank_size, self.bank_seed) if self.bank_size else None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """``auto``: the bank when it can serve (no seed or the bank's, S within it), else fresh."""
        if tolerance is not None:
            raise PlanRefused("tolerance", "adaptive sampling is not available for regression models; send samples")
        samples = self.model.num_samples(samples)
        return bank_or_fresh(sampler, samples, seed, self.bank_size, self.bank_seed, "regression models")

    def cost(self, plan: Plan, rows: int) -> Cost:
        """Measured seconds per row and sample; memory: a block's activations, the head's outputs and, for
        fresh, the drawn weights, in float32."""
        seconds = rows * plan.samples * self.seconds_per_row_sample.get(plan.sampler, 0.0)
        block = min(rows, self._block_rows(plan.samples))
        weights = plan.samples * self.manifest.parameter_count if plan.sampler is Sampler.FRESH else 0
        return Cost(seconds, 4 * (3 * plan.samples * block * self.widest + weights + 4 * plan.samples * rows))

    def _block_rows(self, samples: int) -> int:
        return max(1, BLOCK_FLOATS // (samples * self.widest))

    def _threads(self, rows: int, samples: int) -> AbstractContextManager[None]:
        """Intra-op threads for one request (``pass_threads``; the device's own on CUDA)."""
        if self.device.type != "cpu":
            return nullcontext()
        return intra_op_threads(pass_threads(rows, samples, self.threads))

    def compute(self, jobs: list[tuple[ModelInput, Plan]], batch_seed: int) -> list[AnyScores]:
        """Each request on its own, on one thread or all by its size (``pass_threads``)."""
        results: list[AnyScores] = []
        for x, planned in jobs:
            plan = planned.seeded(batch_seed)
            with self._threads(x.shape[0], plan.samples):
                results.append(run_to_end(self.steps(x, plan)))
        return results

    @torch.no_grad()
    def steps(self, x: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """One weight draw, then a block of rows per piece, then the summary."""
        assert isinstance(x, np.ndarray) and plan.seed is not None  # the data plane and compute see to it
        if plan.sampler is Sampler.BANK:
            weights = slice_samples(self._bank, 0, plan.samples)
        else:
            weights = self.model.sample(plan.samples, torch.Generator(device=self.device).manual_seed(plan.seed))
        assert weights is not None  # plan() refused a bank request without a bank
        rows = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        block = self._block_rows(plan.samples)
        head: torch.Tensor | None = None
        for start in range(0, rows.shape[0], block):
            if start:
                yield
            head = place(head, self.model.propagate(rows[start : start + block], weights), start, rows.shape[0])
        assert head is not None  # the data plane sends at least one row
        yield
        return regression_scores(head, plan, *self.target)
