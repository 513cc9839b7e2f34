"""The torch backend's thread rule: small passes on one intra-op thread, larger ones on all, the same answers
either way (replays stay bitwise whatever the rule picks), and the caller's thread count left as it was."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from app.bnn.plan import run_to_end
from app.bnn.spec import Sampler
from app.serve.backend import Scores
from app.serve.backend_torch import SINGLE_THREAD_ROW_SAMPLES, TorchBackend, intra_op_threads, pass_threads

FIELDS = ("probs", "total", "aleatoric", "epistemic", "std")


def test_small_passes_get_one_thread_and_larger_ones_all() -> None:
    assert pass_threads(1, SINGLE_THREAD_ROW_SAMPLES, configured=4) == 1
    assert pass_threads(2, SINGLE_THREAD_ROW_SAMPLES // 2, configured=4) == 1
    assert pass_threads(1, SINGLE_THREAD_ROW_SAMPLES + 1, configured=4) == 4
    assert pass_threads(64, 512, configured=2) == 2


def test_intra_op_threads_are_restored_even_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failing pass")
    assert torch.get_num_threads() == before


def same(a: Scores, b: Scores) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS) and a.mc_error == b.mc_error


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 intra-op threads to compare with one")
def test_answers_do_not_depend_on_the_thread_count(tiny_checkpoint: Path) -> None:
    """Every sampler, fixed and adaptive, on 1 row and on rows enough for all threads: one thread and two give
    the same bits, on a thread of its own as the server runs them, and ``compute`` (the rule) gives them too."""
    backend = TorchBackend.load(tiny_checkpoint, torch.device("cpu"), None, 0)
    rng = np.random.default_rng(0)
    failures: list[str] = []

    def check() -> None:
        for rows in (1, 600):
            x = rng.standard_normal((rows, backend.manifest.network.in_features)).astype(np.float32)
            for sampler, seed, tolerance in [
                (Sampler.BANK, None, None),
                (Sampler.FRESH, 3, None),
                (Sampler.LOCAL, 3, None),
                (Sampler.BANK, None, 0.01),
                (Sampler.LOCAL, 3, 0.01),
            ]:
                plan = backend.plan(sampler, rows, 32, seed, tolerance).seeded(11)
                answers = []
                for count in (1, 2):
                    with intra_op_threads(count):
                        answers.append(run_to_end(backend.steps(x, plan)))
                (by_rule,) = backend.compute([(x, plan)], 11)
                if not (same(answers[0], answers[1]) and same(answers[0], by_rule)):
                    failures.append(f"{sampler.value}, tolerance {tolerance}, {rows} rows")

    def guarded() -> None:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(repr(exc))

    before = torch.get_num_threads()
    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join()
    assert not failures, failures
    assert torch.get_num_threads() == before
