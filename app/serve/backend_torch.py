"""The torch backend: the Monte Carlo engine (bank, fresh, local, adaptive) on the model's device."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.bnn.engine import MonteCarloEngine
from app.bnn.network import BayesianMLP
from app.bnn.plan import Plan, largest_error, piece_samples, run_to_end, summary_rows
from app.bnn.predictive import Predictive, decompose_with_error
from app.bnn.recurrent import BayesianLSTM
from app.bnn.spec import Sampler
from app.bnn.transformer import BayesianTransformer
from app.checkpoint.io import load_checkpoint
from app.checkpoint.manifest import Manifest, TaskType
from app.errors import CheckpointError
from app.serve.backend import (
    RATE_ROWS,
    BackendKind,
    Cost,
    Scores,
    estimated_cost,
    seconds_per_row_sample,
)

if TYPE_CHECKING:
    from app.serve.backend_regression import RegressionTorchBackend
    from app.serve.backend_sequence import SequenceTorchBackend

# A pass of at most this many rows × samples runs on the compute thread alone. From any thread but the process's
# first, each torch op that goes parallel pays tens of µs to start libgomp's team (a 64K-float add: 27 µs against
# 5 µs on the first thread), which a small pass pays at every op. On 2 cores, 1 row at S = 512 ran 1.1-1.7x faster
# on one thread (bank) and 2.2x (local), 16 rows faster on two; 4 and 8 rows went either way between runs
# (bench/results/compute-threads.md).
SINGLE_THREAD_ROW_SAMPLES = 1 << 12


def pass_threads(rows: int, samples: int, configured: int) -> int:
    """Intra-op threads for one engine call of ``rows`` rows × ``samples`` samples on the CPU."""
    return 1 if rows * samples <= SINGLE_THREAD_ROW_SAMPLES else configured


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the calling thread while inside, then restored."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def summarise(predictive: Predictive, plan: Plan) -> Generator[None, None, Scores]:
    """A predictive's scores a block of rows at a time (``summary_rows``) into preallocated arrays, yielding
    between blocks."""
    probs, block = predictive.probs, summary_rows(predictive.samples)
    rows, classes = probs.shape[1], probs.shape[2]
    mean = np.empty((rows, classes))
    total, aleatoric, epistemic, std = (np.empty(rows, dtype=np.float32) for _ in range(4))
    errors = []
    for start in range(0, rows, block):
        if start:
            yield
        part, where = Predictive(probs[:, start : start + block]), slice(start, start + block)
        u, error = decompose_with_error(part)  # one pass over the samples for both
        mean[where] = part.mean.double().cpu().numpy()
        for out, values in ((total, u.total), (aleatoric, u.aleatoric), (epistemic, u.epistemic), (std, u.std)):
            out[where] = values.cpu().numpy()
        errors.append(error)
    return Scores(plan, mean, total, aleatoric, epistemic, std, largest_error(errors))


class TorchBackend:
    kind = BackendKind.TORCH

    def __init__(self, manifest: Manifest, engine: MonteCarloEngine, device: torch.device) -> None:
        self.manifest = manifest
        self.engine = engine
        self.device = device
        self.threads = torch.get_num_threads()  # what larger passes use (the process's setting when loaded)
        self.seconds_per_row_sample: dict[Sampler, float] = {}  # measured by warm_up

    @classmethod
    def load(
        cls, folder: Path, device: torch.device, bank_samples: int | None, bank_seed: int
    ) -> TorchBackend | SequenceTorchBackend | RegressionTorchBackend:
        """Verify and load the checkpoint, build its engine (and bank), run every sampler once; a sequence
        checkpoint gets the sequence backend (app.serve.backend_sequence), a text checkpoint the text backend
        (app.serve.backend_text), a regression MLP its own (app.serve.backend_regression)."""
        checkpoint = load_checkpoint(folder, device=device)
        manifest = checkpoint.manifest
        bank = manifest.default_samples if bank_samples is None else bank_samples
        if isinstance(checkpoint.model, BayesianTransformer):
            from app.serve.backend_text import TextTorchBackend  # imports this module: on use

            return TextTorchBackend.from_checkpoint(folder, manifest, checkpoint.model, device, bank, bank_seed)
        if isinstance(checkpoint.model, BayesianLSTM):
            from app.serve.backend_sequence import SequenceTorchBackend  # imports this module: on use

            return SequenceTorchBackend.from_checkpoint(folder, manifest, checkpoint.model, device, bank, bank_seed)
        assert isinstance(checkpoint.model, BayesianMLP)  # the manifest has no sequence section
        if manifest.task.type is TaskType.REGRESSION:  # the MLP engine scores classifiers only
            from app.serve.backend_regression import RegressionTorchBackend  # imports this module: on use

            return RegressionTorchBackend.from_checkpoint(folder, manifest, checkpoint.model, device, bank, bank_seed)
        backend = cls(manifest, MonteCarloEngine(checkpoint.model, bank_size=bank, bank_seed=bank_seed), device)
        backend.warm_up(folder)
        return backend

    def warm_up(self, folder: Path) -> None:
        """Run every sampler once on a typical row, then time one piece of each for the cost estimates."""
        x = self.manifest.preprocessing.typical_input()
        for sampler in self.engine.warm_up_samplers():
            bank = sampler is Sampler.BANK
            samples = self.engine.bank_size if bank else self.manifest.default_samples
            plan = self.plan(sampler, 1, samples, None if bank else 0, None)
            (scores,) = self.compute([(x, plan)], batch_seed=0)
            if not np.isfinite(scores.probs).all():
                raise CheckpointError(str(folder), f"warm-up prediction ({sampler.value}) is not finite")
            samples = min(samples, piece_samples(sampler, RATE_ROWS))
            plan = self.plan(sampler, RATE_ROWS, samples, None if bank else 0, None)
            self.seconds_per_row_sample[sampler] = seconds_per_row_sample(self, x, plan)

    @property
    def default_bank(self) -> tuple[int, int] | None:
        return (self.engine.bank_size, self.engine.bank_seed) if self.engine.bank_size else None

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        return self.engine.plan(sampler, rows, samples, seed, tolerance)

    def cost(self, plan: Plan, rows: int) -> Cost:
        return estimated_cost(self.manifest, self.seconds_per_row_sample, plan, rows)

    def _threads(self, rows: int, samples: int) -> AbstractContextManager[None]:
        """The intra-op threads for one engine call (``pass_threads``; the device's own on CUDA)."""
        if self.device.type != "cpu":
            return nullcontext()
        return intra_op_threads(pass_threads(rows, samples, self.threads))

    @torch.no_grad()
    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        """One shared weight draw per (samples, seed) among ``fresh`` plans; the others run on their own. Each
        engine call runs on one thread or all by its size (``pass_threads``; the answers are the same either
        way, tested)."""
        engine, device = self.engine, self.device
        results: list[Scores | None] = [None] * len(jobs)
        shared: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (x_np, planned) in enumerate(jobs):
            plan = planned.seeded(batch_seed)
            if plan.sampler is Sampler.FRESH and plan.tolerance is None:
                shared[(plan.samples, plan.seed)].append(index)  # type: ignore[index]
                continue
            with self._threads(x_np.shape[0], plan.samples):
                results[index] = run_to_end(self.steps(x_np, plan))
        for (samples, seed), members in shared.items():
            xs = [torch.from_numpy(jobs[index][0]).to(device) for index in members]
            with self._threads(sum(x.shape[0] for x in xs), samples):
                for index, predictive in zip(members, engine.shared_fresh(xs, samples, seed), strict=True):
                    results[index] = run_to_end(summarise(predictive, jobs[index][1].seeded(batch_seed)))
        return [r for r in results if r is not None]

    @torch.no_grad()
    def steps(self, x: np.ndarray, plan: Plan) -> Generator[None, None, Scores]:
        result = yield from self.engine.steps(torch.from_numpy(x).to(self.device), plan)
        yield
        return (yield from summarise(result.predictive, result.plan))
