"""The torch backend of sequence (LSTM) models: the sequence Monte Carlo engine's ``bank`` and ``fresh`` samplers.

A request's sequences arrive padded to the model's ``max_length`` (``SequenceInputs``); they run in blocks of
rows (``SequenceMonteCarloEngine.block_rows``) through one weight draw, a block per piece, so a large request
yields between pieces as an MLP's does. Every request runs on its own (no rows shared with another request):
the blocks then depend on the request alone, so replaying it with its seed and sampler is bitwise the same
whoever ran beside it. A classifier's answer is an MLP classifier's ``Scores``; a regression's is
``RegressionScores`` in the target's unit, computed as training calibrated the gate (app.evaluate's
``SequenceBankScorer``): float64 from the float32 mixture, variances scaled by std².
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from app.bnn._base import place
from app.bnn.plan import Plan, PlanRefused, run_to_end
from app.bnn.predictive import Predictive, class_probabilities
from app.bnn.regression import GaussianPredictive
from app.bnn.sequence_engine import SequenceMonteCarloEngine, SequenceNetwork, slice_draw
from app.bnn.spec import Likelihood, Sampler
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.evaluate.regression_scoring import in_target_units
from app.serve.backend import (
    AnyScores,
    BackendKind,
    Cost,
    ModelInput,
    RegressionScores,
    SequenceInputs,
    TextInputs,
    check_sequence_servable,
)
from app.serve.backend_torch import intra_op_threads, pass_threads, summarise

# Sequences of the pass each sampler's rate is measured on, each max_length steps long: few, since an LSTM pass
# is slow (the bundled pm25 model: ~1.5 ms per sequence and sample on 2 cores) and every load pays it.
RATE_SEQUENCES = 8


def regression_scores(head: torch.Tensor, plan: Plan, mean: float, std: float) -> RegressionScores:
    """head (S, N, 2) standardised Gaussian outputs -> the mixture's scores in the target's unit."""
    predictive = GaussianPredictive.from_head(head)
    summary = in_target_units(predictive, mean, std)
    largest = float(summary.epistemic.max()) if summary.epistemic.size else 0.0
    return RegressionScores(
        plan=plan,
        mean=summary.mean,
        total=summary.total,
        aleatoric=summary.aleatoric,
        epistemic=summary.epistemic,
        intervals=summary.intervals,
        mean_error=math.sqrt(largest / max(1, predictive.samples)),
    )


class SequenceTorchBackend:
    kind = BackendKind.TORCH

    def __init__(self, manifest: Manifest, engine: SequenceMonteCarloEngine, device: torch.device) -> None:
        schema = manifest.sequence or manifest.text
        assert schema is not None  # only sequence and text manifests come here
        self.manifest = manifest
        self.engine = engine
        self.model = engine.model
        self.device = device
        self.max_length = schema.max_length
        self.regression = manifest.network.likelihood is Likelihood.GAUSSIAN
        scale = manifest.task.scale
        self.target = (0.0, 1.0) if scale is None else (scale.mean, scale.std)
        self.threads = torch.get_num_threads()
        self.seconds_per_row_sample: dict[Sampler, float] = {}

    @classmethod
    def from_checkpoint(
        cls, folder: Path, manifest: Manifest, model: SequenceNetwork, device: torch.device, bank: int, bank_seed: int
    ) -> SequenceTorchBackend:
        """The backend of a loaded sequence checkpoint, its bank drawn, warmed up and its rates measured."""
        check_sequence_servable(folder, manifest)
        backend = cls(manifest, SequenceMonteCarloEngine(model, bank_size=bank, bank_seed=bank_seed), device)
        backend.warm_up(folder)
        return backend

    def typical_input(self, rows: int) -> ModelInput:
        """``rows`` sequences of max_length typical steps (the training medians, first categories)."""
        step = self.manifest.preprocessing.typical_input()  # (1, d)
        x = np.repeat(step[None], rows, axis=0).repeat(self.max_length, axis=1)
        return SequenceInputs(x.astype(np.float32), np.full(rows, self.max_length, dtype=np.int64))

    def warm_up(self, folder: Path) -> None:
        """Run each sampler once on a typical sequence, then time each on RATE_SEQUENCES of them."""
        for sampler in (Sampler.BANK, Sampler.FRESH) if self.engine.bank_size else (Sampler.FRESH,):
            bank = sampler is Sampler.BANK
            samples = self.engine.bank_size if bank else self.manifest.default_samples
            plan = self.plan(sampler, 1, samples, None if bank else 0, None)
            (scores,) = self.compute([(self.typical_input(1), plan)], batch_seed=0)
            if not np.isfinite(scores.total).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({sampler.value}) is not finite")
            many = self.typical_input(RATE_SEQUENCES)
            started = time.perf_counter()
            self.compute([(many, plan)], batch_seed=0)
            self.seconds_per_row_sample[sampler] = (time.perf_counter() - started) / (RATE_SEQUENCES * plan.samples)

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.engine.bank_size, self.engine.bank_seed) if self.engine.bank_size else None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        """The engine's policy (bank or fresh; auto picks); adaptive sampling is not offered for sequences."""
        if tolerance is not None:
            raise PlanRefused("tolerance", "adaptive sampling is not available for sequence models; send samples")
        return self.engine.plan(sampler, samples, seed)

    def cost(self, plan: Plan, rows: int) -> Cost:
        """Measured seconds per sequence (or text) and sample; memory: one block's widest activations
        (S, block, T, width) in float32 (an LSTM's gates, a Transformer's widest map: ``activation_width``; a few
        live at once), the head's outputs and, for fresh, the drawn weights."""
        seconds = rows * plan.samples * self.seconds_per_row_sample.get(plan.sampler, 0.0)
        block = min(rows, self.engine.block_rows(plan.samples, self.max_length))
        activations = plan.samples * block * self.max_length * self.engine.activation_width(self.max_length)
        weights = plan.samples * self.manifest.parameter_count if plan.sampler is Sampler.FRESH else 0
        head = plan.samples * rows * self.model.spec.head_features
        return Cost(seconds, 4 * (3 * activations + weights + 4 * head))

    def _threads(self, rows: int, samples: int) -> AbstractContextManager[None]:
        """Intra-op threads for one request (``pass_threads``: a sequence weighs about its steps' rows of an MLP;
        the device's own on CUDA)."""
        if self.device.type != "cpu":
            return nullcontext()
        return intra_op_threads(pass_threads(rows * self.max_length, samples, self.threads))

    def compute(self, jobs: list[tuple[ModelInput, Plan]], batch_seed: int) -> list[AnyScores]:
        """Each request on its own (see the module's docstring), on one thread or all by its size."""
        results: list[AnyScores] = []
        for inputs, planned in jobs:
            plan = planned.seeded(batch_seed)
            with self._threads(inputs.shape[0], plan.samples):
                results.append(run_to_end(self.steps(inputs, plan)))
        return results

    @torch.no_grad()
    def steps(self, inputs: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """One weight draw, then a block of rows per piece, then the summary."""
        assert isinstance(inputs, SequenceInputs | TextInputs) and plan.seed is not None  # the data plane sees to it
        engine, device = self.engine, self.device
        if plan.sampler is Sampler.BANK:
            # The engine's own bank, sliced as its ``execute`` does; ``execute`` would not yield between blocks.
            assert engine._bank is not None  # plan() checked
            weights = slice_draw(engine._bank, 0, plan.samples)
        else:
            weights = self.model.sample(plan.samples, torch.Generator(device=device).manual_seed(plan.seed))
        if isinstance(inputs, SequenceInputs):
            x = torch.from_numpy(np.ascontiguousarray(inputs.x, dtype=np.float32)).to(device)
        else:  # a text model's token ids
            x = torch.from_numpy(np.ascontiguousarray(inputs.ids, dtype=np.int64)).to(device)
        lengths = torch.from_numpy(np.asarray(inputs.lengths, dtype=np.int64)).to(device)
        block = engine.block_rows(plan.samples, x.shape[1])
        head: torch.Tensor | None = None
        for start in range(0, x.shape[0], block):
            if start:
                yield
            part = self.model.propagate(x[start : start + block], weights, lengths[start : start + block])
            head = place(head, part, start, x.shape[0])
        assert head is not None  # the data plane sends at least one sequence
        yield
        if self.regression:
            return regression_scores(head, plan, *self.target)
        predictive = Predictive(class_probabilities(head, self.manifest.network.likelihood))
        return (yield from summarise(predictive, plan))
