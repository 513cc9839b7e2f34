"""Dynamic batching over each model's backend, off the event loop, with large requests run piece by piece.

Requests for one model queue up; a per-model task takes what is queued (up to ``batch_max_rows`` rows) and
runs it on the single compute thread. Batching is continuous: a request that finds the compute thread free runs
at once, alone; batches form from what queued while the thread was busy (the model's previous pass, or another
model's), and only then may the task wait, at most ``batch_max_wait_ms``, for more to arrive before the thread
frees. A request whose
estimated compute exceeds ``STEPPED_OVER_S`` is not part of a batch: it runs one piece at a time
(``Backend.steps``, about 10 ms each), and what arrives meanwhile runs between its pieces, so a one-row request
waits for one piece, not for the whole large request; several large requests take turns. Each request comes
with its plan (``app.bnn.plan``, decided by the backend's ``plan``): the frozen bank by default, whose draws
every request shares at no cost; ``fresh`` requests of a batch with the same (samples, seed) share one weight
draw, and plans without a seed take the batch's seed, which the response reports; ``local`` and adaptive
requests run on their own. A request's rows always go through the draws on their own, so replaying it alone
with its reported seed and sampler gives bitwise the same answer.

A failed pass fails the requests of its batch with the exception and the loop goes on; a request whose client
went away (its future cancelled) is dropped before its batch runs, and so is one past the server's deadline
(its deadline: ``request_timeout_s`` or the shorter one the request asked; a 504 at once; its rows are not
computed unless a pass had already started them, and a large request stops at its next piece). Beyond
``max_queued_rows`` rows waiting or running for a model, a request is refused at once (``Overloaded``: 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from app.bnn.plan import Plan
from app.serve.backend import AnyScores, ModelInput
from app.serve.errors import DeadlineExceeded, Overloaded
from app.serve.metrics import ServiceMetrics
from app.serve.repository import ServedModel
from app.serve.settings import Settings
from app.serve.tracing import Tracing, now_ns

T = TypeVar("T")
STEPPED_OVER_S = 0.02  # a request estimated to take longer runs piece by piece, between the other requests


@dataclass
class _Job:
    model: ServedModel  # the version it was submitted to: a reload swaps new requests only
    x: ModelInput  # (N, d) float32 rows, or sequences
    plan: Plan
    future: asyncio.Future[AnyScores]
    enqueued: float
    stepped: bool  # run piece by piece on its own, not in a batch
    queued_ns: int = 0  # wall clock (tracing's spans): queued, its pass (or first piece) began, its scores came
    started_ns: int = 0
    finished_ns: int = 0
    batch_requests: int = 1  # requests in its pass

    @property
    def rows(self) -> int:
        return self.x.shape[0]


@dataclass
class _Running:
    """A stepped request between its pieces."""

    job: _Job
    steps: Generator[None, None, AnyScores]
    seconds: float = 0.0  # compute time of its pieces so far


def _advance(steps: Generator[None, None, AnyScores]) -> AnyScores | None:
    """Run one piece on the compute thread: the scores once the last one is done, else None."""
    try:
        next(steps)
    except StopIteration as stop:
        return stop.value
    return None


def new_seed() -> int:
    """A fresh seed for requests that did not bring one (returned to the client for replay)."""
    return secrets.randbits(31)


def _compute(model: ServedModel, jobs: list[_Job], batch_seed: int) -> list[AnyScores | None]:
    """The batch's scores (every job of one model version), None for a job whose request ended (deadline,
    client gone) while it waited for this thread: it is not computed. (``done()`` reads one attribute: safe off
    the loop, at worst one pass late.)"""
    assert model.backend is not None  # only ready models are queued
    live = [job for job in jobs if not job.future.done()]
    results = model.backend.compute([(job.x, job.plan) for job in live], batch_seed) if live else []
    if len(results) != len(live):  # a backend bug fails its batch, not the loop
        raise RuntimeError(f"the {model.name} backend answered {len(results)} of {len(live)} requests")
    answered = dict(zip(map(id, live), results, strict=True))
    return [answered.get(id(job)) for job in jobs]


class BatchingEngine:
    """Per-model queues feeding one compute thread (the backend uses the cores inside each pass)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing or Tracing(enabled=False)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbnn-compute")
        self._queues: dict[str, asyncio.Queue[_Job]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rows: dict[str, int] = {}  # rows waiting or running, per model
        self._passes = 0  # passes and pieces handed to the compute thread and not finished, every model's
        self._idle = asyncio.Event()  # set while no pass is on the compute thread
        self._idle.set()

    async def submit(self, model: ServedModel, x: ModelInput, plan: Plan, timeout_s: float | None = None) -> AnyScores:
        """Queue ``x`` (N, d), or N sequences, for ``model`` to run as ``plan`` and wait for its scores, at most
        ``timeout_s`` (the server's ``request_timeout_s`` when None or longer)."""
        assert model.backend is not None  # only ready models are queued
        loop = asyncio.get_running_loop()
        queue = self._queues.get(model.name)
        if queue is None:
            queue = self._queues[model.name] = asyncio.Queue()
            self._tasks[model.name] = asyncio.create_task(
                self._batch_loop(model.name, queue), name=f"batch-{model.name}"
            )
        name, rows, waiting = model.name, x.shape[0], self._rows.get(model.name, 0)
        if waiting + rows > self.settings.max_queued_rows:
            raise Overloaded(
                f"model '{name}' has {waiting} rows waiting or running, and this server takes at most "
                f"{self.settings.max_queued_rows} per model: retry shortly"
            )
        stepped = model.backend.cost(plan, rows).seconds > STEPPED_OVER_S
        job = _Job(
            model=model,
            x=x,
            plan=plan,
            future=loop.create_future(),
            enqueued=time.perf_counter(),
            stepped=stepped,
            queued_ns=now_ns(),
        )
        self._rows[name] = waiting + rows
        job.future.add_done_callback(lambda _: self._rows.__setitem__(name, self._rows[name] - rows))
        await queue.put(job)
        server = self.settings.request_timeout_s
        timeout = server if timeout_s is None else min(timeout_s, server)
        try:
            # On timeout wait_for cancels the future: a job still queued is then dropped before its batch runs,
            # and a stepped one at its next piece.
            scores = await asyncio.wait_for(job.future, timeout)
            self.tracing.record("sbnn.queue", job.queued_ns, job.started_ns, rows=rows)
            self.tracing.record(
                "sbnn.compute",
                job.started_ns,
                job.finished_ns,
                rows=rows,
                stepped=job.stepped,
                batch_requests=job.batch_requests,
            )
            return scores
        except TimeoutError:
            whose = "the server's" if timeout == server else "the request's"
            raise DeadlineExceeded(f"not answered within {whose} {timeout:g} s deadline") from None

    def _ready(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        """What is queued now, up to the row limit, without waiting (large requests are in progress)."""
        jobs: list[_Job] = []
        rows = 0
        while rows < self.settings.batch_max_rows and not queue.empty():
            jobs.append(queue.get_nowait())
            rows += jobs[-1].rows
        return jobs

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        """The next batch: the first job and what is queued behind it, up to the row limit. Only while the
        compute thread is busy does it wait for more (until the thread frees, at most ``batch_max_wait_ms``):
        an idle server runs a request at once."""
        jobs = [await queue.get()]
        rows = jobs[0].rows
        deadline = time.perf_counter() + self.settings.batch_max_wait_ms / 1000.0
        while rows < self.settings.batch_max_rows:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if self._idle.is_set() or remaining <= 0:
                    break
                next_job = await self._next_while_busy(queue, remaining)
                if next_job is None:
                    break
                job = next_job
            jobs.append(job)
            rows += job.rows
        return jobs

    async def _next_while_busy(self, queue: asyncio.Queue[_Job], timeout: float) -> _Job | None:
        """The next job to arrive while the compute thread is busy; None once it frees or ``timeout`` passes."""
        getter = asyncio.ensure_future(queue.get())
        idle = asyncio.ensure_future(self._idle.wait())
        done, _ = await asyncio.wait((getter, idle), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()  # a cancelled Queue.get takes nothing off the queue
        return None

    async def _on_compute_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the compute thread, counted as busy while it is there."""
        self._passes += 1
        self._idle.clear()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)
        finally:
            self._passes -= 1
            if not self._passes:
                self._idle.set()

    async def _batch_loop(self, name: str, queue: asyncio.Queue[_Job]) -> None:
        """Batches as they come; while large requests are in progress, what is queued, then one of their pieces.
        Each job runs on the version it was submitted to (a batch that spans a reload runs a pass per version)."""
        running: deque[_Running] = deque()
        try:
            while True:
                jobs = self._ready(queue) if running else await self._collect(queue)
                jobs = [job for job in jobs if not job.future.done()]  # drop requests whose client went away
                now, wall = time.perf_counter(), now_ns()
                for job in jobs:
                    self.metrics.stage_duration.labels(name, "queue").observe(now - job.enqueued)
                    job.started_ns = wall
                    if job.stepped:
                        backend = job.model.backend
                        assert backend is not None  # only ready models are queued
                        running.append(_Running(job, backend.steps(job.x, job.plan.seeded(new_seed()))))
                versions: dict[int, list[_Job]] = {}
                for job in jobs:
                    if not job.stepped:
                        versions.setdefault(id(job.model), []).append(job)
                for batch in versions.values():
                    await self._pass(batch[0].model, batch)
                if running:
                    await self._piece(running)
        except asyncio.CancelledError:  # closing: nobody will answer these requests
            for run in running:
                run.job.future.cancel()
            raise

    async def _pass(self, model: ServedModel, jobs: list[_Job]) -> None:
        """One batched pass on the compute thread; its requests answered."""
        started = time.perf_counter()
        try:
            results = await self._on_compute_thread(_compute, model, jobs, new_seed())
        except asyncio.CancelledError:
            for job in jobs:
                job.future.cancel()
            raise
        except Exception as exc:  # a failed pass fails its requests, never the loop
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        computed = [(job, result) for job, result in zip(jobs, results, strict=True) if result is not None]
        if computed:  # what the pass carried: requests that ended while waiting were not computed
            self._observe(model, time.perf_counter() - started, [job for job, _ in computed])
        finished = now_ns()
        for job, result in computed:
            job.finished_ns, job.batch_requests = finished, len(computed)
            if not job.future.done():
                job.future.set_result(result)

    async def _piece(self, running: deque[_Running]) -> None:
        """The next piece of the first large request in line, which then goes to the back of the line; one
        whose request ended (deadline, client gone) stops here."""
        run = running.popleft()
        if run.job.future.done():
            run.steps.close()
            return
        started = time.perf_counter()
        try:
            scores = await self._on_compute_thread(_advance, run.steps)
        except asyncio.CancelledError:
            run.job.future.cancel()
            raise
        except Exception as exc:  # a failed request, never the loop
            if not run.job.future.done():
                run.job.future.set_exception(exc)
            return
        run.seconds += time.perf_counter() - started
        if scores is None:
            running.append(run)
        elif not run.job.future.done():
            self._observe(run.job.model, run.seconds, [run.job])
            run.job.finished_ns = now_ns()
            run.job.future.set_result(scores)

    def _observe(self, model: ServedModel, seconds: float, jobs: list[_Job]) -> None:
        self.metrics.stage_duration.labels(model.name, "compute").observe(seconds)
        self.metrics.batch_rows.labels(model.name).observe(sum(job.rows for job in jobs))
        self.metrics.batch_requests.labels(model.name).observe(len(jobs))

    async def close(self) -> None:
        """Cancel every model's batching task and shut the compute thread down."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._queues.values():  # requests still queued will not run
            while not queue.empty():
                queue.get_nowait().future.cancel()
        # Off the event loop: a pass in flight finishes on the compute thread while the loop keeps running.
        shutdown = functools.partial(self.executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)
