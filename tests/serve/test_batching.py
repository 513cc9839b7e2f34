"""The batching engine on its own: coalescing, a failing pass, a client gone, closing, large requests piece by
piece between the others, deadlines.

Batches are made deterministic without timing: requests are submitted as tasks before the event loop runs any
of them (so all are queued when the batching task first looks), and the wait for more is 0 ms. A minimal
backend records what each pass received and can fail or block on demand; the last test runs the tiny
checkpoint's real torch backend.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.bnn.plan import Plan
from app.bnn.spec import MonteCarloError, Sampler
from app.serve.backend import BackendKind, Cost, Scores
from app.serve.batching import BatchingEngine
from app.serve.errors import DeadlineExceeded
from app.serve.metrics import ServiceMetrics
from app.serve.repository import ModelState, ServedModel
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

POISON = -1.0  # a request whose first value is this fails its whole pass


class RecordingBackend:
    """Answers each row with its first value; records the rows of every request of every pass, and each piece of
    a large request (``large_rows`` rows or more: estimated over the stepping threshold)."""

    kind = BackendKind.TORCH
    default_bank = None

    def __init__(self, large_rows: int = 10**9, pieces: int = 3, piece_s: float = 0.0) -> None:
        self.passes: list[list[int]] = []
        self.log: list[tuple[str, int]] = []  # ("pass", rows) or ("piece", index), in the order they ran
        self.entered = threading.Event()  # a pass or piece has started
        self.release = threading.Event()  # a pass or piece may finish
        self.release.set()
        self.large_rows, self.pieces, self.piece_s = large_rows, pieces, piece_s

    def cost(self, plan: Plan, rows: int) -> Cost:
        return Cost(1.0 if rows >= self.large_rows else 0.0, 0)

    def steps(self, x: np.ndarray, plan: Plan) -> Generator[None, None, Scores]:
        for piece in range(self.pieces):
            if piece:
                yield
            self.entered.set()
            if not self.release.wait(timeout=30):
                raise TimeoutError("the test never released the piece")
            time.sleep(self.piece_s)
            self.log.append(("piece", piece))
        return _scores(x, plan)

    def plan(self, sampler: Sampler, rows: int, samples: int, seed: int | None, tolerance: float | None) -> Plan:
        return Plan(Sampler.FRESH, samples, seed, tolerance)

    def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the pass")
        self.passes.append([x.shape[0] for x, _ in jobs])
        self.log.append(("pass", sum(x.shape[0] for x, _ in jobs)))
        if any(x[0, 0] == POISON for x, _ in jobs):
            raise ValueError("a poisoned pass")
        return [_scores(x, plan.seeded(batch_seed)) for x, plan in jobs]


def _scores(x: np.ndarray, plan: Plan) -> Scores:
    value = x[:, 0].astype(np.float64)
    return Scores(plan, np.stack([1 - value, value], 1), value, value, value * 0, value, MonteCarloError(0.0, 0.0))


def _engine(tmp_path: Path, batch_max_rows: int = 2048, request_timeout_s: float = 30.0) -> BatchingEngine:
    settings = Settings(
        models=tmp_path, batch_max_rows=batch_max_rows, batch_max_wait_ms=0.0, request_timeout_s=request_timeout_s
    )
    return BatchingEngine(settings, ServiceMetrics(CollectorRegistry()))


def _model(backend: object) -> ServedModel:
    return ServedModel(name="m", path=Path("m"), state=ModelState.READY, backend=backend)  # type: ignore[arg-type]


def _rows(first: float, n: int = 3) -> np.ndarray:
    return np.full((n, 2), first, dtype=np.float32)


def _submit(engine: BatchingEngine, model: ServedModel, x: np.ndarray, seed: int | None = None) -> asyncio.Task:
    return asyncio.create_task(engine.submit(model, x, Plan(Sampler.FRESH, 8, seed)))


async def test_concurrent_requests_share_a_pass_up_to_the_row_limit(tmp_path: Path) -> None:
    backend = RecordingBackend()
    engine, model = _engine(tmp_path, batch_max_rows=7), _model(backend)
    tasks = [_submit(engine, model, _rows(v), seed) for v, seed in ((0.1, 5), (0.2, None), (0.3, None), (0.4, 6))]
    answers = await asyncio.gather(*tasks)
    assert backend.passes == [[3, 3, 3], [3]]  # 3 + 3 < 7 rows, so a third joins; the fourth starts a pass
    for answer, value in zip(answers, (0.1, 0.2, 0.3, 0.4), strict=True):
        np.testing.assert_allclose(answer.total, value, rtol=1e-6)  # each request gets its own rows back
    assert answers[0].plan.seed == 5 and answers[3].plan.seed == 6
    assert answers[1].plan.seed == answers[2].plan.seed is not None  # no seed: the pass's, reported
    await engine.close()


async def test_a_failing_pass_fails_exactly_its_requests_and_the_loop_goes_on(tmp_path: Path) -> None:
    backend = RecordingBackend()
    engine, model = _engine(tmp_path, batch_max_rows=4), _model(backend)
    poisoned, neighbour, later = (_submit(engine, model, _rows(v)) for v in (POISON, 0.2, 0.3))
    results = await asyncio.gather(poisoned, neighbour, later, return_exceptions=True)
    assert backend.passes == [[3, 3], [3]]
    assert all(isinstance(r, ValueError) and str(r) == "a poisoned pass" for r in results[:2])
    assert isinstance(results[2], Scores)
    after = await engine.submit(model, _rows(0.5), Plan(Sampler.FRESH, 8, 1))  # the loop still serves
    np.testing.assert_allclose(after.total, 0.5, rtol=1e-6)
    await engine.close()


async def test_a_backend_answering_too_few_requests_fails_its_pass(tmp_path: Path) -> None:
    class Short(RecordingBackend):
        def compute(self, jobs: list[tuple[np.ndarray, Plan]], batch_seed: int) -> list[Scores]:
            answers = super().compute(jobs, batch_seed)
            return answers[:-1] if len(answers) > 1 else answers  # loses one answer of a shared pass

    engine, model = _engine(tmp_path), _model(Short())
    results = await asyncio.gather(*(_submit(engine, model, _rows(v)) for v in (0.1, 0.2)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "answered 1 of 2" in str(r) for r in results)
    assert isinstance(await engine.submit(model, _rows(0.3), Plan(Sampler.FRESH, 8, 1)), Scores)  # not a dead loop
    await engine.close()


async def test_a_request_whose_client_went_away_is_dropped(tmp_path: Path) -> None:
    backend = RecordingBackend()
    backend.release.clear()
    engine, model = _engine(tmp_path), _model(backend)
    running = _submit(engine, model, _rows(0.1, n=1))
    await asyncio.to_thread(backend.entered.wait, 30)  # the first pass is on the compute thread
    gone, waiting = _submit(engine, model, _rows(0.2, n=2)), _submit(engine, model, _rows(0.3, n=3))
    while engine._queues["m"].qsize() < 2:  # noqa: SLF001 - both queued behind the running pass
        await asyncio.sleep(0)
    gone.cancel()
    backend.release.set()
    first, last = await running, await waiting
    assert gone.cancelled()
    assert backend.passes == [[1], [3]]  # the cancelled request never reached the backend
    np.testing.assert_allclose(first.total, 0.1, rtol=1e-6)
    np.testing.assert_allclose(last.total, 0.3, rtol=1e-6)
    await engine.close()


async def test_close_cancels_the_loops_and_what_they_hold_and_shuts_the_executor(tmp_path: Path) -> None:
    backend = RecordingBackend()
    backend.release.clear()
    engine, model = _engine(tmp_path), _model(backend)
    running = _submit(engine, model, _rows(0.1))
    await asyncio.to_thread(backend.entered.wait, 30)
    queued = _submit(engine, model, _rows(0.2))
    while engine._queues["m"].qsize() < 1:  # noqa: SLF001
        await asyncio.sleep(0)
    loop_task = engine._tasks["m"]  # noqa: SLF001
    closing = asyncio.create_task(engine.close())
    await asyncio.wait([loop_task])  # cancelled without waiting for the pass in flight
    backend.release.set()  # let the compute thread finish, so the executor can shut down
    await closing
    assert loop_task.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await running
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert backend.passes == [[3]]  # the queued request never ran
    with pytest.raises(RuntimeError, match="shutdown"):
        engine.executor.submit(int)


@pytest.mark.parametrize("stepped", [False, True], ids=["batched", "piece-by-piece"])
async def test_the_real_backend_answers_a_coalesced_request_as_it_answers_it_alone(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, stepped: bool
) -> None:
    """The tiny checkpoint's torch backend: fresh requests of one pass with the same (samples, seed) share a
    weight draw (of several draw units), the bank is shared, an unseeded fresh request takes the pass's seed;
    replayed alone with the reported plan, every request gets bitwise the same answer, whether it ran in a
    batch or piece by piece between the others."""
    import torch

    if stepped:
        monkeypatch.setattr("app.serve.batching.STEPPED_OVER_S", -1.0)

    from app.serve.backend_torch import TorchBackend

    backend = TorchBackend.load(tiny_checkpoint, torch.device("cpu"), None, 0)
    engine, model = _engine(tmp_path), _model(backend)
    base = backend.manifest.preprocessing.typical_input()
    rng = np.random.default_rng(0)
    xs = [base + rng.normal(0, 0.5, (n, base.shape[1])).astype(np.float32) for n in (1, 4, 2, 3)]
    plans = [
        backend.plan(Sampler.FRESH, 1, 160, 7, None),
        backend.plan(Sampler.FRESH, 4, 160, 7, None),  # shares the first one's draw
        backend.plan(Sampler.AUTO, 2, 64, None, None),  # the bank
        backend.plan(Sampler.FRESH, 3, 16, None, None),  # the pass's seed
    ]
    tasks = [asyncio.create_task(engine.submit(model, x, plan)) for x, plan in zip(xs, plans, strict=True)]
    answers = await asyncio.gather(*tasks)
    assert [a.plan.sampler for a in answers] == [Sampler.FRESH, Sampler.FRESH, Sampler.BANK, Sampler.FRESH]
    for x, answer in zip(xs, answers, strict=True):
        (alone,) = backend.compute([(x, answer.plan)], batch_seed=12345)
        assert alone.plan == answer.plan
        np.testing.assert_array_equal(alone.probs, answer.probs)
        np.testing.assert_array_equal(alone.epistemic, answer.epistemic)
    await engine.close()


async def test_a_large_request_runs_piece_by_piece_with_small_ones_between(tmp_path: Path) -> None:
    backend = RecordingBackend(large_rows=100)
    backend.release.clear()
    engine, model = _engine(tmp_path), _model(backend)
    large = _submit(engine, model, _rows(0.9, n=100))
    await asyncio.to_thread(backend.entered.wait, 30)  # its first piece is on the compute thread
    small = [_submit(engine, model, _rows(v, n=1)) for v in (0.1, 0.2)]
    while engine._queues["m"].qsize() < 2:  # noqa: SLF001 - both queued behind the piece
        await asyncio.sleep(0)
    backend.release.set()
    answers = await asyncio.gather(large, *small)
    assert backend.log == [("piece", 0), ("pass", 2), ("piece", 1), ("piece", 2)]  # not behind the whole request
    for answer, value in zip(answers, (0.9, 0.1, 0.2), strict=True):
        np.testing.assert_allclose(answer.total, value, rtol=1e-6)
    assert answers[0].plan.seed is not None  # a large request without a seed gets its own, reported
    await engine.close()


async def test_a_large_request_past_its_deadline_stops_at_its_next_piece(tmp_path: Path) -> None:
    backend = RecordingBackend(large_rows=100, pieces=50, piece_s=0.02)
    engine, model = _engine(tmp_path, request_timeout_s=0.2), _model(backend)
    with pytest.raises(DeadlineExceeded, match="the request's 0.1 s deadline"):
        await engine.submit(model, _rows(0.9, n=100), Plan(Sampler.FRESH, 8, 1), timeout_s=0.1)
    ran = len(backend.log)
    answer = await engine.submit(model, _rows(0.3, n=1), Plan(Sampler.FRESH, 8, 1))  # the loop still serves
    np.testing.assert_allclose(answer.total, 0.3, rtol=1e-6)
    assert ran < 50 and len(backend.log) <= ran + 2  # at most the piece in flight after the deadline, then the pass
    with pytest.raises(DeadlineExceeded, match="the server's 0.2 s deadline"):  # a longer ask gets the server's
        await engine.submit(model, _rows(0.9, n=100), Plan(Sampler.FRESH, 8, 1), timeout_s=3600)
    await engine.close()


def test_scores_summarised_a_block_of_rows_at_a_time_equal_the_whole() -> None:
    import torch

    from app.bnn.engine import monte_carlo_error
    from app.bnn.plan import run_to_end, summary_rows
    from app.bnn.predictive import Predictive, decompose
    from app.serve.backend_torch import summarise

    probs = torch.rand(2048, 100, 3, generator=torch.Generator().manual_seed(0))
    predictive = Predictive(probs / probs.sum(-1, keepdim=True))
    assert summary_rows(2048) < 100  # several blocks
    scores = run_to_end(summarise(predictive, Plan(Sampler.FRESH, 2048, 1)))
    whole = decompose(predictive)
    np.testing.assert_allclose(scores.probs, predictive.mean.double().numpy(), rtol=1e-6)
    for mine, theirs in ((scores.total, whole.total), (scores.epistemic, whole.epistemic), (scores.std, whole.std)):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=1e-7)
    error = monte_carlo_error(predictive)
    assert scores.mc_error.probability == pytest.approx(error.probability, rel=1e-5)
    assert scores.mc_error.mutual_information == pytest.approx(error.mutual_information, rel=1e-5)


def _engine_waiting(tmp_path: Path, wait_ms: float) -> BatchingEngine:
    settings = Settings(models=tmp_path, batch_max_wait_ms=wait_ms)
    return BatchingEngine(settings, ServiceMetrics(CollectorRegistry()))


async def test_an_idle_server_runs_a_request_at_once_without_waiting_for_company(tmp_path: Path) -> None:
    """Continuous batching: the wait bound applies only while the compute thread is busy."""
    engine, model = _engine_waiting(tmp_path, wait_ms=1000.0), _model(RecordingBackend())
    started = time.perf_counter()
    await engine.submit(model, _rows(0.1), Plan(Sampler.FRESH, 8, 1))
    assert time.perf_counter() - started < 0.5  # not the 1 s a wait for company would take
    await engine.close()


async def test_requests_arriving_while_the_thread_is_busy_share_the_next_pass(tmp_path: Path) -> None:
    backend = RecordingBackend()
    engine, model = _engine_waiting(tmp_path, wait_ms=1000.0), _model(backend)
    backend.release.clear()
    first = _submit(engine, model, _rows(0.1))
    await asyncio.to_thread(backend.entered.wait, 10)  # the first pass holds the compute thread
    later = [_submit(engine, model, _rows(v)) for v in (0.2, 0.3, 0.4)]
    await asyncio.sleep(0.05)
    backend.release.set()
    await asyncio.gather(first, *later)
    assert backend.passes == [[3], [3, 3, 3]]  # the three queued while it ran went together, at once
    await engine.close()
