"""GPU check: training picks CUDA, the bundled model predicts on CUDA, and the service serves on CUDA.

Usage: python bench/gpu_check.py [--out DIR]   (writes gpu.md and gpu.json into DIR, default bench/results)
Needs a CUDA machine; the synthetic training table is generated in place (no data package needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn.predictive import predict  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.data.tabular import load_table  # noqa: E402
from app.train.config import TrainConfig  # noqa: E402
from app.train.pipeline import train_checkpoint  # noqa: E402
from bench._server import ROW, running_server  # noqa: E402


def synthetic(path: Path, rows: int = 3000) -> None:
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    y = rng.uniform(size=rows) < 1 / (1 + np.exp(-(2 * x1 - x2)))
    pd.DataFrame({"x1": x1, "x2": x2, "y": np.where(y, "yes", "no")}).to_csv(path, index=False)


def timed(fn, repeats: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def serve_latency(device: str, requests: int) -> dict[str, float]:
    import httpx

    try:
        with (
            running_server(timeout=60, device=device) as server,
            httpx.Client(base_url=server.base, timeout=60) as client,
        ):
            url = "/v1/models/flchain-mortality/predict"
            for _ in range(10):
                client.post(url, json={"instances": [ROW]}).raise_for_status()
            latencies = []
            for _ in range(requests):
                t = time.perf_counter()
                client.post(url, json={"instances": [ROW]}).raise_for_status()
                latencies.append((time.perf_counter() - t) * 1000)
            bulk = {"instances": [ROW] * 1024}
            client.post(url, json=bulk).raise_for_status()
            t = time.perf_counter()
            client.post(url, json=bulk).raise_for_status()
            bulk_ms = (time.perf_counter() - t) * 1000
            ready = client.get("/v1/models/flchain-mortality").json()["state"]
    except RuntimeError as exc:  # the server never got ready: report why instead of failing the whole check
        return {"error": str(exc)}
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "bulk_1024_rows_ms": bulk_ms,
        "state": ready,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    report: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "t.csv"
        synthetic(table)
        data = load_table(table, "y", seed=0)
        config = TrainConfig(hidden=[64, 64], rank=8, epochs=5, kl_warmup_epochs=1, patience=5, default_samples=128)
        runs = [train_checkpoint(data, config, Path(tmp) / f"m{i}") for i in range(2)]
        report["train_device"] = runs[0][1].device
        report["train_seconds"] = runs[0][1].duration_seconds
        report["train_same_seed_identical_on_cuda"] = all(
            torch.equal(a, b)
            for a, b in zip(runs[0][1].model.state_dict().values(), runs[1][1].model.state_dict().values(), strict=True)
        )
        reloaded = load_checkpoint(Path(tmp) / "m0", device="cuda")
        report["checkpoint_trained_on_cuda_loads_on_cuda"] = next(reloaded.model.parameters()).is_cuda

    cpu = load_checkpoint(ROOT / "models" / "flchain-mortality", device="cpu")
    gpu = load_checkpoint(ROOT / "models" / "flchain-mortality", device="cuda")
    x = torch.as_tensor(cpu.manifest.preprocessing.transform({k: [v] * 1024 for k, v in ROW.items()}))
    xg = x.cuda()
    p_gpu = [predict(gpu.model, xg, 512, torch.Generator(device="cuda").manual_seed(7)).probs for _ in range(2)]
    p_cpu = predict(cpu.model, x, 512, torch.Generator().manual_seed(7)).probs
    report["cuda_same_seed_identical"] = bool(torch.equal(p_gpu[0], p_gpu[1]))
    # Different devices draw different random streams: the means agree within Monte Carlo error only.
    report["cpu_vs_cuda_mean_abs_diff"] = float((p_gpu[0].mean(0).cpu() - p_cpu.mean(0)).abs().max())
    for name, model, xx, gen in [
        ("cpu", cpu.model, x, lambda: torch.Generator().manual_seed(1)),
        ("cuda", gpu.model, xg, lambda: torch.Generator(device="cuda").manual_seed(1)),
    ]:
        report[f"predict_1row_S512_ms_{name}"] = timed(lambda m=model, v=xx, g=gen: predict(m, v[:1], 512, g()), 50)
        report[f"predict_1024rows_S512_ms_{name}"] = timed(lambda m=model, v=xx, g=gen: predict(m, v, 512, g()), 10)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")  # kept if serving fails below
    report["serve_cuda"] = serve_latency("cuda", 200)
    report["serve_cpu"] = serve_latency("cpu", 200)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# GPU check", "", "Command: `python bench/gpu_check.py`", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.items()]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
