"""Replays across restarts: the auto sampler chooses with fixed costs (app.bnn.engine.REFERENCE_COST), never with
timings of the start, so one request answers bitwise the same from two starts of the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest


def test_a_seeded_request_answers_the_same_after_a_restart(
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_uvicorn: Callable[..., Any],
    flchain_row: dict[str, Any],
) -> None:
    rows = [{**flchain_row, "age": 50 + 2 * i, "kappa": 0.8 + i / 10} for i in range(20)]
    answers = []
    for start in range(2):
        with start_uvicorn(model_repository, tmp_path_factory.mktemp(f"replay-{start}")) as base:
            for n in (1, 8, 16, 20):  # either side of the fresh/local crossover
                body = {"instances": rows[:n], "samples": 512, "seed": 5}
                response = httpx.post(f"{base}/v1/models/flchain-mortality/predict", json=body, timeout=60)
                assert response.status_code == 200, response.text
                answer = response.json()
                answers.append((n, answer["sampler"], answer["predictions"], answer["mc_error"]))
    first, second = answers[:4], answers[4:]
    assert [a[1] for a in first] == ["local", "local", "local", "fresh"]
    assert first == second  # the same sampler and the same numbers, to the last digit JSON carries
