"""Dynamic batching over the fast Monte Carlo engine, off the event loop.

Requests for one model queue up; a per-model task takes what is queued (up to ``batch_max_rows`` rows,
waiting at most ``batch_max_wait_ms`` for more) and runs it on the single compute thread. Each request gets
a sampler (``app.bnn.engine``): the frozen bank by default, whose draws every request shares at no cost;
``fresh`` requests of a batch with the same (samples, seed) share one weight draw, and requests without a seed
take the batch's seed, which the response reports; ``local`` and adaptive requests run on their own. A
request's rows always go through the draws on their own, so replaying it alone with its reported seed and
sampler gives bitwise the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from app.bnn.engine import EngineResult, MonteCarloError, Sampler
from app.bnn.predictive import decompose
from app.serve.metrics import ServiceMetrics
from app.serve.repository import ServedModel
from app.serve.settings import Settings


@dataclass(frozen=True)
class InferenceOptions:
    """What a request asks of the Monte Carlo pass."""

    samples: int  # the sample count, or the cap when ``tolerance`` is set
    seed: int | None = None
    sampler: Sampler = Sampler.AUTO
    tolerance: float | None = None  # adaptive: stop once both MC standard errors are at most this


@dataclass(frozen=True)
class Scores:
    """One request's predictive: probs (N, C) and each uncertainty (N,) in nats."""

    probs: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    std: np.ndarray
    samples: int
    seed: int
    sampler: Sampler
    mc_error: MonteCarloError


@dataclass
class _Job:
    x: np.ndarray  # (N, d) float32
    options: InferenceOptions
    future: asyncio.Future[Scores]
    enqueued: float

    @property
    def rows(self) -> int:
        return self.x.shape[0]


def new_seed() -> int:
    """A fresh seed for requests that did not bring one (returned to the client for replay)."""
    return secrets.randbits(31)


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


@torch.no_grad()
def compute(model: ServedModel, jobs: list[_Job], batch_seed: int) -> list[Scores]:
    """The batch's Monte Carlo passes: one shared weight draw per (samples, seed) among ``fresh`` requests."""
    engine = model.engine
    assert engine is not None  # only ready models are queued
    results: list[Scores | None] = [None] * len(jobs)
    shared: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        o = job.options
        sampler, seed = engine.resolve(o.sampler, job.rows, o.samples, o.seed, batch_seed, o.tolerance is not None)
        x = torch.from_numpy(job.x).to(model.device)
        if o.tolerance is not None:
            results[index] = _scores(engine.run_adaptive(x, seed, o.tolerance, o.samples, sampler=sampler), seed)
        elif sampler is Sampler.FRESH:
            shared[(engine.model.num_samples(o.samples), seed)].append(index)
        else:
            results[index] = _scores(engine.run(x, o.samples, seed, sampler), seed)
    for (samples, seed), members in shared.items():
        weights = engine.model.sample(samples, torch.Generator(device=model.device).manual_seed(seed))
        for index in members:
            x = torch.from_numpy(jobs[index].x).to(model.device)
            results[index] = _scores(engine.evaluate(x, weights), seed)
    return [r for r in results if r is not None]


class BatchingEngine:
    """Per-model queues feeding one compute thread (torch uses the cores inside each pass)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbnn-compute")
        self._queues: dict[str, asyncio.Queue[_Job]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, model: ServedModel, x: np.ndarray, options: InferenceOptions) -> Scores:
        """Queue ``x`` (N, d) for ``model`` and wait for its scores."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(model.name)
        if queue is None:
            queue = self._queues[model.name] = asyncio.Queue()
            self._tasks[model.name] = asyncio.create_task(self._batch_loop(model, queue), name=f"batch-{model.name}")
        job = _Job(x=x, options=options, future=loop.create_future(), enqueued=time.perf_counter())
        await queue.put(job)
        return await job.future

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        """The next batch: the first job, then what arrives within the wait, up to the row limit."""
        jobs = [await queue.get()]
        rows = jobs[0].rows
        deadline = time.perf_counter() + self.settings.batch_max_wait_ms / 1000.0
        while rows < self.settings.batch_max_rows:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            rows += job.rows
        return jobs

    async def _batch_loop(self, model: ServedModel, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(queue)
            jobs = [job for job in jobs if not job.future.done()]  # drop requests whose client went away
            if not jobs:
                continue
            started = time.perf_counter()
            for job in jobs:
                self.metrics.stage_duration.labels(model.name, "queue").observe(started - job.enqueued)
            try:
                results = await loop.run_in_executor(self.executor, compute, model, jobs, new_seed())
            except Exception as exc:  # a failed pass fails its requests, never the loop
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.metrics.stage_duration.labels(model.name, "compute").observe(time.perf_counter() - started)
            self.metrics.batch_rows.labels(model.name).observe(sum(job.rows for job in jobs))
            self.metrics.batch_requests.labels(model.name).observe(len(jobs))
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.executor.shutdown(wait=True, cancel_futures=True)
