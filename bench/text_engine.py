"""The Transformer's batched passes against a Python loop over samples (issue 18's engine target).

The default text model (vocabulary 8,000, 64 tokens, 2 blocks of d_model 64, 4 heads, d_ff 128), randomly
initialised (speed does not depend on training): one 32-token sentence at S = 64 through the bank (all S samples
in one pass) against the same S weight samples run one at a time, per kind; and 64 sentences, for the shape of
the curve. The two are timed in turn, one call each per repeat, so both see the machine in the same state (its
speed drifts by 20-40% over seconds on these shared cores); the speed-up is the median of the repeats' ratios.

    python bench/text_engine.py [--repeats 7]
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
from app.bnn.sequence_engine import SequenceMonteCarloEngine, slice_draw  # noqa: E402
from app.bnn.spec import LayerKind, Sampler, TextNetworkSpec  # noqa: E402
from app.bnn.transformer import BayesianTransformer, TransformerSample  # noqa: E402

SAMPLES, TOKENS, VOCAB = 64, 32, 8000
KINDS = (LayerKind.LOWRANK, LayerKind.FULLRANK, LayerKind.MCDROPOUT)


def interleaved(batched: Callable[[], object], looped: Callable[[], object], repeats: int) -> tuple[float, ...]:
    """(batched ms, loop ms, speed-up): medians over ``repeats`` turns of one call each, after one warm-up."""
    batched(), looped()
    turns = []
    for _ in range(repeats):
        start = time.perf_counter()
        batched()
        middle = time.perf_counter()
        looped()
        turns.append((middle - start, time.perf_counter() - middle))
    return (
        1e3 * statistics.median(b for b, _ in turns),
        1e3 * statistics.median(loop for _, loop in turns),
        statistics.median(loop / b for b, loop in turns),
    )


@torch.no_grad()
def per_sample_loop(net: BayesianTransformer, ids: torch.Tensor, bank: TransformerSample) -> None:
    """The same S weight samples, one propagate each."""
    for s in range(SAMPLES):
        net.propagate(ids, slice_draw(bank, s, s + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "text-engine.md")
    args = parser.parse_args()
    command = ("python bench/text_engine.py " + " ".join(sys.argv[1:])).strip()
    lines = [
        "# Text engine: all S samples of a Transformer at once against a loop over samples",
        "",
        f"Command: `{command}`. {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Vocabulary {VOCAB:,}, 2 blocks of "
        f"d_model 64, 4 heads, d_ff 128, S = {SAMPLES}, bank sampler, {TOKENS}-token sentences; median of "
        f"{args.repeats} turns of one call each, the speed-up the median of their ratios.",
        "",
        "| kind | parameters | sentences | batched ms | loop over samples ms | speed-up (target ≥ 20× at 1) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for kind in KINDS:
        spec = TextNetworkSpec(vocab_size=VOCAB, max_length=64, d_model=64, heads=4, layers=2, d_ff=128, kind=kind)
        net = BayesianTransformer(spec, generator=torch.Generator().manual_seed(0)).eval()
        engine = SequenceMonteCarloEngine(net, bank_size=SAMPLES)
        plan = engine.plan(Sampler.BANK, SAMPLES)
        bank = engine._bank
        assert bank is not None
        for rows in (1, 64):
            ids = torch.randint(3, VOCAB, (rows, TOKENS), generator=torch.Generator().manual_seed(1))
            ids[:, 0] = 2  # [CLS]
            batched, looped, ratio = interleaved(
                functools.partial(engine.execute, ids, None, plan),
                functools.partial(per_sample_loop, net, ids, bank),
                args.repeats,
            )
            lines.append(
                f"| {kind.value} | {parameter_count(net):,} | {rows} | {batched:.1f} | {looped:.1f} | {ratio:.1f}× |"
            )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
