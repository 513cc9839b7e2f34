"""The sequence engine's batched passes against a Python loop over samples (issue 17, item 1).

The paper's LSTM shape (2 layers, H = 64, 24-hour windows of 15 features, S = 150), randomly initialised (speed
does not depend on training): for N = 1, 64 and 1,024 rows, the bank pass (all S samples at once, the time loop
the only loop) against the same S weight samples run one at a time, per kind.

Then the issue's targets at S = 256 for one sequence of 24 steps: ≥ 20× faster than the per-sample loop, and
within 3× of 24 × the dense 1-row time, where the dense 1-row time is the MLP engine's bank pass on one row of
a BayesianMLP of the same kind, inputs and widths (15 → 64 → 64 → 2) at the same S: what 24 feed-forward steps
would cost, so the ratio measures what the recurrence adds beyond running a dense network once per step.

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

from app.bnn.engine import MonteCarloEngine  # noqa: E402
from app.bnn.network import BayesianMLP, NetworkSpec, parameter_count  # noqa: E402
from app.bnn.recurrent import BayesianLSTM, SequenceSample  # noqa: E402
from app.bnn.sequence_engine import SequenceMonteCarloEngine, slice_draw  # noqa: E402
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
def per_sample_loop(net: BayesianLSTM, x: torch.Tensor, bank: SequenceSample, samples: int = SAMPLES) -> None:
    """The same S weight samples, one propagate each."""
    for s in range(samples):
        net.propagate(x, slice_draw(bank, s, s + 1))


TARGET_SAMPLES = 256


def target_row(kind: LayerKind, repeats: int) -> str:
    """The issue's two engine targets for ``kind``: speed-up over the loop, and against 24 dense 1-row passes."""
    spec = SequenceNetworkSpec(in_features=FEATURES, hidden=HIDDEN, layers=2, kind=kind)
    net = BayesianLSTM(spec, generator=torch.Generator().manual_seed(0)).eval()
    engine = SequenceMonteCarloEngine(net, bank_size=TARGET_SAMPLES)
    plan = engine.plan(Sampler.BANK, TARGET_SAMPLES)
    bank = engine._bank
    assert bank is not None
    x = torch.randn(1, STEPS, FEATURES, generator=torch.Generator().manual_seed(1))
    batched = timed(functools.partial(engine.execute, x, None, plan), repeats)
    looped = timed(functools.partial(per_sample_loop, net, x, bank, TARGET_SAMPLES), max(1, repeats // 2))
    mlp = BayesianMLP(NetworkSpec(in_features=FEATURES, hidden=[HIDDEN, HIDDEN], out_features=1, kind=kind))
    dense_engine = MonteCarloEngine(mlp.eval(), bank_size=TARGET_SAMPLES)
    row = torch.randn(1, FEATURES, generator=torch.Generator().manual_seed(2))
    dense = timed(functools.partial(dense_engine.run, row, TARGET_SAMPLES, None, Sampler.BANK), repeats)
    return (
        f"| {kind.value} | {batched:.1f} | {looped:.1f} | {looped / batched:.1f}× | {dense:.2f} | "
        f"{batched / (STEPS * dense):.2f} |"
    )


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
    lines += [
        "",
        f"Targets at S = {TARGET_SAMPLES}, one sequence of {STEPS} steps (median of {args.repeats} calls):",
        "",
        "| kind | batched ms | loop ms | speed-up (≥ 20×) | dense 1-row ms | batched / (24 × dense) (≤ 3) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for kind in (LayerKind.LOWRANK, LayerKind.FULLRANK):
        lines.append(target_row(kind, args.repeats))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
