"""Would one bank pass over coalesced requests' rows pay, and could it keep replays bitwise? (issue 16, item 5)

A pass over N rows of the bundled model's frozen bank (S = 512) through each low-rank layout, for N from 1 to 64:
ms per pass and per row. Then the property a shared pass needs: a row's answer must not depend on which other
rows share the pass, nor where it sits, nor the thread count. For a fixed tile of T rows (every pass padded to
T, the only way a lone row and a shared one can run the same kernel), row 0 of a pool is placed at every
position among random company, and at the last position with 1 and with 2 threads; the answers are compared
bit for bit with the first one, and with the answer of the row alone (N = 1).

    python bench/shared_bank_pass.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn.fused import lowrank_feature_major, lowrank_row_major  # noqa: E402
from app.serve.backend_torch import TorchBackend  # noqa: E402

TILES = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shared-bank-pass.md")
    args = parser.parse_args()
    backend = TorchBackend.load(ROOT / "models" / "flchain-mortality", torch.device("cpu"), None, 0)
    engine = backend.engine
    layouts = {
        "row-major": lambda x: lowrank_row_major(x, engine._bank, engine.model),
        "feature-major": lambda x: lowrank_feature_major(x, engine._bank_layout, engine.bank_size, engine.model),
    }
    command = ("python bench/shared_bank_pass.py " + " ".join(sys.argv[1:])).strip()
    generator = torch.Generator().manual_seed(1)
    pool = torch.randn(256, engine.model.spec.in_features, generator=generator)
    lines = [
        "# One bank pass over coalesced rows (issue 16, item 5)",
        "",
        f"Command: `{command}`; {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The bundled model's bank, S = {engine.bank_size}.",
        "",
        "| N (tile) | layout | ms / pass | ms / row | mismatches (20 placements, 2 thread counts) "
        "| against the row alone: max abs diff |",
        "|--:|---|--:|--:|--:|--:|",
    ]
    for tile in TILES:
        for name, run in layouts.items():
            x = pool[:tile].contiguous()
            run(x)
            start = time.perf_counter()
            for _ in range(args.repeats):
                run(x)
            ms = 1e3 * (time.perf_counter() - start) / args.repeats
            reference, mismatches = None, 0
            for trial in range(20):
                x = pool[torch.randperm(len(pool), generator=generator)[:tile]].clone()
                x[trial % tile] = pool[0]
                answer = run(x)[:, trial % tile]
                if reference is None:
                    reference = answer.clone()
                mismatches += not torch.equal(answer, reference)
            threads = torch.get_num_threads()
            for count in (1, 2):
                torch.set_num_threads(count)
                x = pool[torch.randperm(len(pool), generator=generator)[:tile]].clone()
                x[tile - 1] = pool[0]
                mismatches += not torch.equal(run(x)[:, tile - 1], reference)
            torch.set_num_threads(threads)
            alone = float((run(pool[:1])[:, 0] - reference).abs().max())
            lines.append(f"| {tile} | {name} | {ms:.3f} | {ms / tile:.3f} | {mismatches} | {alone:.1e} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
