"""The sequence engine's batched passes against a Python loop over samples (issue 17, item 1).

The paper's LSTM shape (2 layers, H = 64, 24-hour windows of 15 features, S = 150), randomly initialised (speed
does not depend on training): for N = 1, 64 and 1,024 rows, the bank pass (all S samples at once, the time loop
the only loop) against the same S weight samples run one at a time, per kind.

    python bench/sequence_engine.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn.network import parameter_count  # noqa: E402
from app.bnn.recurrent import BayesianLSTM, SequenceSample  # noqa: E402
from app.bnn.sequence_engine import SequenceMonteCarloEngine, slice_sequence_sample  # noqa: E402
from app.bnn.spec import LayerKind, Sampler, SequenceNetworkSpec  # noqa: E402

SAMPLES, STEPS, FEATURES, HIDDEN = 150, 24, 15, 64


def timed(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def per_sample_loop(net: BayesianLSTM, x: torch.Tensor, bank: SequenceSample) -> None:
    """The same S weight samples, one propagate each."""
    for s in range(SAMPLES):
        net.propagate(x, slice_sequence_sample(bank, s, s + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sequence-engine.md")
    args = parser.parse_args()
    command = ("python bench/sequence_engine.py " + " ".join(sys.argv[1:])).strip()
    lines = [
        "# Sequence engine: all S samples at once against a loop over samples",
        "",
        f"Command: `{command}`. {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. 2 LSTM layers, H = {HIDDEN}, "
        f"T = {STEPS}, {FEATURES} features, S = {SAMPLES}, bank sampler; median of {args.repeats} calls.",
        "",
        "| kind | parameters | N | batched ms | loop over samples ms | speed-up |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for kind in (LayerKind.LOWRANK, LayerKind.FULLRANK):
        spec = SequenceNetworkSpec(in_features=FEATURES, hidden=HIDDEN, layers=2, kind=kind)
        net = BayesianLSTM(spec, generator=torch.Generator().manual_seed(0)).eval()
        engine = SequenceMonteCarloEngine(net, bank_size=SAMPLES)
        plan = engine.plan(Sampler.BANK, SAMPLES)
        bank = engine._bank
        assert bank is not None
        for rows in (1, 64, 1024):
            x = torch.randn(rows, STEPS, FEATURES, generator=torch.Generator().manual_seed(1))
            batched = timed(functools.partial(engine.execute, x, None, plan), args.repeats)
            looped = timed(functools.partial(per_sample_loop, net, x, bank), max(1, args.repeats // 2))
            lines.append(
                f"| {kind.value} | {parameter_count(net):,} | {rows} | {batched:.1f} | {looped:.1f} | "
                f"{looped / batched:.1f}× |"
            )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
