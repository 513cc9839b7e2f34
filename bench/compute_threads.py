"""How many intra-op threads a pass should use on the server's compute thread (issue 16; the rule in
app/serve/backend_torch.py, ``pass_threads``).

The server runs every pass on a thread of its own, not the process's first. There, each torch op that goes
parallel pays to start libgomp's team. This measures, on such a thread: a 64K-float add (parallel above torch's
grain) against the same on the first thread, and the bundled model's ``backend.compute`` at S = 512 for each
sampler and several row counts with one thread and with all, in alternating blocks, with what the rule picks.

    python bench/compute_threads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn.spec import Sampler  # noqa: E402
from app.serve.backend_torch import TorchBackend, intra_op_threads, pass_threads  # noqa: E402

CASES = [
    (Sampler.BANK, None, (1, 4, 8, 16, 32, 64, 256, 1024)),
    (Sampler.LOCAL, 5, (1, 4, 8, 16, 32)),
    (Sampler.FRESH, 5, (1, 16, 64, 256)),
]


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def on_a_thread(work: Callable[[], object]) -> None:
    """``work`` on a new thread (as the server's compute thread runs a pass), waited for."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compute-threads.md")
    args = parser.parse_args()
    configured = torch.get_num_threads()
    backend = TorchBackend.load(ROOT / "models" / "flchain-mortality", torch.device("cpu"), None, 0)
    block = torch.randn(512, 1, 128)
    add = {"first thread": median_ms(lambda: block + 1, 3000)}
    on_a_thread(lambda: add.__setitem__("another thread", median_ms(lambda: block + 1, 3000)))

    rows_out: list[str] = []

    def passes() -> None:
        rng = np.random.default_rng(0)
        for sampler, seed, row_counts in CASES:
            for rows in row_counts:
                x = rng.standard_normal((rows, backend.manifest.network.in_features)).astype(np.float32)
                plan = backend.plan(sampler, rows, 512, seed, None)
                repeats = max(3, 200 // rows)
                times: dict[int, list[float]] = {1: [], configured: []}
                for _ in range(args.rounds):
                    for count in times:
                        with intra_op_threads(count):
                            call = functools.partial(backend.engine.execute, torch.from_numpy(x), plan)
                            times[count].append(median_ms(call, repeats))
                one, many = (statistics.median(times[c]) for c in (1, configured))
                picked = pass_threads(rows, plan.samples, configured)
                faster = 1 if one <= many else configured
                rows_out.append(f"| {sampler.value} | {rows} | {one:.2f} | {many:.2f} | {picked} | {faster} |")

    on_a_thread(passes)
    command = ("python bench/compute_threads.py " + " ".join(sys.argv[1:])).strip()
    lines = [
        "# Intra-op threads for a pass on the compute thread",
        "",
        f"Command: `{command}`. {os.cpu_count()} CPUs, torch {torch.__version__} ({configured} intra-op threads "
        "configured), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the bundled model, S = 512.",
        "",
        f"A 64K-float add (`torch.randn(512, 1, 128) + 1`, parallel above torch's grain), median of 3,000: "
        f"{1e3 * add['first thread']:.1f} µs on the process's first thread, {1e3 * add['another thread']:.1f} µs "
        "on another thread (where the server's passes run).",
        "",
        f"The engine's pass (`engine.execute`) on another thread, median ms over {args.rounds} alternating rounds:",
        "",
        f"| sampler | rows | 1 thread | {configured} threads | the rule picks | faster here |",
        "|---|--:|--:|--:|--:|--:|",
        *rows_out,
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
