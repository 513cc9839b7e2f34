"""Monte Carlo engine benchmark: every sampler against the per-sample loop, bayesian-torch, full-rank BBB and
the roofline, for the bundled model and a wider synthetic network; all figures from one run.

Usage: python bench/engine.py [--quick] [--device cpu|cuda] [--out bench/results]
Writes engine.md and engine.json (engine-cuda.* on CUDA). bayesian-torch is optional (bench only):
`pip install --no-deps bayesian-torch==0.5.0` (its declared torchvision/tensorboard needs are not used here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn import BayesianMLP, LayerKind, NetworkSpec  # noqa: E402
from app.bnn.engine import MonteCarloEngine, Sampler  # noqa: E402
from app.bnn.predictive import class_probabilities  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device, budget: float = 0.4) -> float:
    """Median-free simple timing: mean seconds per call over repeats filling ``budget`` seconds (≥ 3)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - start
    repeats = max(3, min(200, int(budget / max(once, 1e-6))))
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def sgemm_peak(device: torch.device) -> float:
    """Sustained FP32 GEMM FLOP/s on this device (2048³ on CPU, 8192³ on CUDA)."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / timed(lambda: a @ b, device, budget=1.0)


def lowrank_flops(model: BayesianMLP, rows: int, samples: int) -> float:
    return 2.0 * rows * samples * sum(layer.rank * (layer.in_features + layer.out_features) for layer in model.layers)


def onnx_fresh(model: BayesianMLP) -> Callable[[np.ndarray, int], object] | None:
    """The onnx backend's fresh path on the exported sampling graph: (x, S) -> scores with numpy noise, as the
    server runs it (None when onnxruntime is missing)."""
    try:
        import onnxruntime as ort

        from app.bnn.spec import Sampler
        from app.checkpoint.onnx_export import noise_inputs, sampling_graph
        from app.serve.backend_onnx import SampledGraph, run_sampled
    except ImportError:
        return None
    cpu_model = BayesianMLP(model.spec, device="cpu")
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    inputs = noise_inputs(cpu_model)
    session = ort.InferenceSession(sampling_graph(cpu_model), providers=["CPUExecutionProvider"])
    graph = SampledGraph(session, inputs, Sampler.FRESH)
    return lambda x, samples: run_sampled(graph, x, samples, seed=5)


def onnx_sessions(model: BayesianMLP, samples_list: list[int]) -> dict[int, object] | None:
    """An onnxruntime session on the exported frozen-bank graph per S, as ``sbnn export-onnx`` writes it (None
    when onnxruntime is missing)."""
    try:
        import onnxruntime as ort

        from app.checkpoint.onnx_export import bank_graph
    except ImportError:
        return None
    cpu_model = BayesianMLP(model.spec, device="cpu")
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    sessions = {}
    for samples in samples_list:
        bank = cpu_model.sample(cpu_model.num_samples(samples), torch.Generator().manual_seed(0))
        sessions[samples] = ort.InferenceSession(bank_graph(cpu_model, bank), providers=["CPUExecutionProvider"])
    return sessions


def bayesian_torch_net(shapes: list[tuple[int, int]], device: torch.device) -> torch.nn.Module | None:
    try:
        from bayesian_torch.layers import LinearReparameterization
    except ImportError:
        return None

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(LinearReparameterization(n, m) for n, m in shapes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i, layer in enumerate(self.layers):
                x, _ = layer(x)
                if i < len(self.layers) - 1:
                    x = torch.relu(x)
            return x

    return Net().to(device).eval()


@torch.no_grad()
def bench_network(
    name: str, model: BayesianMLP, sizes: list[int], samples_list: list[int], device: torch.device, peak: float
) -> list[dict]:
    model = model.to(device).eval()
    d = model.spec.in_features
    engine = MonteCarloEngine(model, bank_size=max(samples_list))
    shapes = model.spec.layer_shapes()
    fullrank = (
        BayesianMLP(
            model.spec.model_copy(update={"kind": LayerKind.FULLRANK, "ranks": None}),
            generator=torch.Generator().manual_seed(0),
        )
        .to(device)
        .eval()
    )
    bt = bayesian_torch_net(shapes, device)
    session = onnx_sessions(model, samples_list)
    fresh = onnx_fresh(model)
    rows_out = []
    for samples in samples_list:
        for n in sizes:
            x = torch.randn(n, d, device=device)
            g = torch.Generator(device=device).manual_seed(1)
            entries: dict[str, float] = {}
            for sampler in (Sampler.BANK, Sampler.FRESH, Sampler.LOCAL):
                if sampler is Sampler.LOCAL and n * samples > 64 * 512:
                    continue  # local draws r + m normals per row and sample: not for bulk scoring
                seed = None if sampler is Sampler.BANK else 5
                entries[f"engine {sampler.value}"] = timed(
                    lambda x=x, s=samples, seed=seed, sampler=sampler: engine.run(x, s, seed, sampler), device
                )
            entries["engine auto (seeded)"] = timed(lambda x=x, s=samples: engine.run(x, s, 5), device)

            def loop(x: torch.Tensor = x, s: int = samples, g: torch.Generator = g) -> None:
                torch.cat(
                    [class_probabilities(model(x, samples=1, generator=g), model.spec.likelihood) for _ in range(s)]
                )

            entries["per-sample loop"] = timed(loop, device)
            if session is not None and samples in session:
                xn = x.cpu().numpy()
                entries["onnxruntime bank (CPU)"] = timed(
                    lambda xn=xn, s=samples: session[s].run(None, {"x": xn}), torch.device("cpu")
                )
            if fresh is not None:
                xn = x.cpu().numpy()
                entries["onnxruntime fresh (CPU, numpy noise)"] = timed(
                    lambda xn=xn, s=samples: fresh(xn, s), torch.device("cpu")
                )
            if bt is not None:
                entries["bayesian-torch loop"] = timed(lambda x=x, s=samples: [bt(x) for _ in range(s)], device)
            entries["full-rank BBB batched"] = timed(
                lambda x=x, s=samples: engine_fullrank(fullrank, x, s, device), device
            )
            flops = lowrank_flops(model, n, samples)
            roofline = flops / peak
            for label, seconds in entries.items():
                rows_out.append(
                    {
                        "network": name,
                        "rows": n,
                        "samples": samples,
                        "method": label,
                        "latency_ms": seconds * 1000,
                        "row_samples_per_s": n * samples / seconds,
                        "roofline_fraction": roofline / seconds if label.startswith("engine") else None,
                    }
                )
            rows_out.append(
                {
                    "network": name,
                    "rows": n,
                    "samples": samples,
                    "method": "roofline (low-rank FLOPs at peak)",
                    "latency_ms": roofline * 1000,
                    "row_samples_per_s": n * samples / roofline,
                    "roofline_fraction": 1.0,
                }
            )
            print(
                f"{name} N={n} S={samples}: " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in entries.items()),
                flush=True,
            )
    return rows_out


def engine_fullrank(model: BayesianMLP, x: torch.Tensor, samples: int, device: torch.device) -> None:
    from app.bnn.predictive import predict

    predict(model, x, samples, torch.Generator(device=device).manual_seed(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N in {1, 64} and S = 512 only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    peak = sgemm_peak(device)
    sizes = [1, 64] if args.quick else [1, 64, 1024]
    samples_list = [512] if args.quick else [64, 512]
    bundled = load_checkpoint(ROOT / "models" / "flchain-mortality", device=device).model
    wide = BayesianMLP(
        NetworkSpec(in_features=256, hidden=[512, 512], out_features=2, likelihood="categorical", ranks=[16, 16, 2]),
        generator=torch.Generator().manual_seed(0),
    )
    results = bench_network("bundled 9→128→128→1 (ranks 9/15/1)", bundled, sizes, samples_list, device, peak)
    results += bench_network("wide 256→512→512→2 (ranks 16/16/2)", wide, sizes, samples_list, device, peak)
    from importlib import metadata

    try:
        bt_version = f"bayesian-torch {metadata.version('bayesian-torch')}"
    except metadata.PackageNotFoundError:
        bt_version = "bayesian-torch not installed (its rows are missing)"
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, device {device}"
        + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, Python {platform.python_version()}, {bt_version}"
    )
    suffix = "-cuda" if device.type == "cuda" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"engine{suffix}.json").write_text(
        json.dumps({"machine": machine, "sgemm_peak_gflops": peak / 1e9, "results": results}, indent=2) + "\n"
    )
    lines = [
        f"# Monte Carlo engine benchmark ({device.type})",
        "",
        f"Command: `python bench/engine.py{' --quick' if args.quick else ''} --device {device.type}`. "
        f"Machine: {machine}. Measured SGEMM peak: {peak / 1e9:.0f} GFLOP/s.",
        "",
    ]
    for net, n, s in dict.fromkeys((r["network"], r["rows"], r["samples"]) for r in results):
        group = [r for r in results if (r["network"], r["rows"], r["samples"]) == (net, n, s)]
        loop = next(r for r in group if r["method"] == "per-sample loop")["latency_ms"]
        bt = next((r["latency_ms"] for r in group if r["method"] == "bayesian-torch loop"), None)
        lines += [
            f"## {net}, N = {n}, S = {s}",
            "",
            "| method | latency ms | rows×samples/s | roofline fraction | × vs per-sample loop | × vs bayesian-torch |",
            "|---|---|---|---|---|---|",
        ]
        for r in group:
            frac = f"{r['roofline_fraction']:.0%}" if r["roofline_fraction"] is not None else "-"
            vs_bt = f"{bt / r['latency_ms']:.1f}" if bt else "-"
            lines.append(
                f"| {r['method']} | {r['latency_ms']:.3f} | {r['row_samples_per_s']:.3g} | {frac} | "
                f"{loop / r['latency_ms']:.1f} | {vs_bt} |"
            )
        lines.append("")
    (args.out / f"engine{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
