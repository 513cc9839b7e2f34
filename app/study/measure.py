"""What the comparison measures beyond each run's ``result.json``: risk–coverage curves from the stored scores,
the singular-value energy of trained weights, inference times, and the machine they were taken on.

Inference is timed after all training (:func:`time_inference`), so that training does not disturb it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.data.dataset import TabularDataset

TIMING_ROWS = (1, 1024)


def risk_coverage(labels: np.ndarray, probs: np.ndarray, score: np.ndarray, referred: np.ndarray) -> np.ndarray:
    """Error rate of the cases kept when the ``referred`` fractions (F,) with the highest ``score`` (N,) are
    referred; labels (N,), probs (N, C) -> (F,). Rows tied on the score are referred at random, so a group
    cut part-way counts its expected errors (a constant score, as a deterministic network's MI, gives a
    flat curve at the overall error rate)."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ordered = np.asarray(score, dtype=np.float64)[order]
    wrong = (np.asarray(probs).argmax(1) != np.asarray(labels))[order].astype(np.float64)
    rows = wrong.size
    errors_before = np.r_[0.0, np.cumsum(wrong)]  # errors among the first k rows, k = 0..N
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]  # first row of each tie group
    ends = np.r_[starts[1:], rows]
    group = np.repeat(np.arange(starts.size), ends - starts)  # (N,) tie group of each sorted row
    cut = np.minimum(np.round(np.asarray(referred) * rows).astype(int), rows - 1)  # rows referred, keep ≥ 1
    first, last = starts[group[cut]], ends[group[cut]]
    group_errors = errors_before[last] - errors_before[first]
    referred_errors = errors_before[first] + (cut - first) / (last - first) * group_errors
    return (errors_before[-1] - referred_errors) / (rows - cut)


def singular_value_energy(folders: Sequence[Path]) -> dict[str, dict[str, list[float]]]:
    """Share of Σσ² in the top r singular values of each hidden layer's weight, r = 1..min(m, n), for trained
    deterministic checkpoints (mean and std over them), keyed "n→m"."""
    from app.checkpoint.io import load_checkpoint

    curves: dict[str, list[np.ndarray]] = {}
    for folder in folders:
        model = load_checkpoint(folder).model
        for layer in list(model.layers)[:-1]:  # the output layer (m = 1) has a single singular value
            sigma = torch.linalg.svdvals(layer.weight[0].detach().double()).numpy()
            energy = np.cumsum(sigma**2) / np.sum(sigma**2)
            curves.setdefault(f"{layer.in_features}→{layer.out_features}", []).append(energy)
    out = {}
    for layer, energies in curves.items():
        stacked = np.stack(energies)
        out[layer] = {
            "ranks": list(range(1, stacked.shape[1] + 1)),
            "mean": stacked.mean(0).tolist(),
            "std": (stacked.std(0, ddof=1) if len(energies) > 1 else np.zeros(stacked.shape[1])).tolist(),
        }
    return out


def time_inference(folder: Path, dataset: TabularDataset, repeats: int) -> dict[str, float]:
    """Median seconds of one call of the serving engine at the checkpoint's default S, after one warm-up call
    (test rows, repeated to fill the batch; CPU, the process's torch threads): ``rows_<N>`` for an unseeded
    request (the frozen bank), ``seeded_rows_1`` for a seeded one-row request (fresh or local, as the engine's
    cost model chooses)."""
    from app.bnn.engine import MonteCarloEngine, Sampler
    from app.checkpoint.io import load_checkpoint

    checkpoint = load_checkpoint(folder)
    x = torch.as_tensor(checkpoint.manifest.preprocessing.transform(dataset.test.frame))
    samples = checkpoint.model.num_samples(checkpoint.manifest.default_samples)
    engine = MonteCarloEngine(checkpoint.model, bank_size=samples, bank_seed=0)
    calls = {f"rows_{rows}": (rows, None, Sampler.BANK) for rows in TIMING_ROWS}
    calls["seeded_rows_1"] = (1, 5, Sampler.AUTO)
    timings = {}
    for key, (rows, seed, sampler) in calls.items():
        batch = x[torch.arange(rows) % x.shape[0]]  # (rows, d)
        engine.run(batch, samples, seed, sampler)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.run(batch, samples, seed, sampler)
            seconds.append(time.perf_counter() - started)
        timings[key] = statistics.median(seconds)
    return timings


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none): how busy the machine was while timing."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def machine_info() -> dict[str, Any]:
    """The CPU, cores, torch threads, platform, GPU and versions the comparison ran on, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        versions["sbnn"] = metadata.version("sbnn")
    except metadata.PackageNotFoundError:
        versions["sbnn"] = "0+unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }
