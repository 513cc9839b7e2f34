"""Is the frozen bank's error what every answer reports? The bundled model's test rows scored through many
banks of the served size against a 16,384-sample reference (issue 20's bank audit).

For each bank seed b and row i: d = MI_b,i − MI_ref,i, and the error the answer reports for that row (the
jackknife SE of its MI, app.bnn.predictive.mutual_information_error), the same for p(predicted class). The
report: the spread of z = d / error over banks and rows (≈ 1 when the reported error is the bank's own error),
the systematic part (mean over banks of d: the plug-in estimator's bias, shared by every bank) against the
reported error, and each bank's offset shared by its rows (mean over rows of z).

Usage: python bench/bank_error.py [--banks 32] [--reference 16384] [--out bench/results]
Writes bank-error.md and bank-error.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.bnn.engine import MonteCarloEngine, Sampler  # noqa: E402
from app.bnn.predictive import entropy, mutual_information_error  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.data.flchain import load_flchain  # noqa: E402

BUNDLED = ROOT / "models" / "flchain-mortality"


def _mi_and_p(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """probs (S, N, C) -> the MI (N,), p(predicted class) (N,), the errors an answer reports for each, and the
    predicted class (N,)."""
    per_sample = entropy(probs)
    mean = probs.mean(0)
    mi = (entropy(mean) - per_sample.mean(0)).clamp_min(0.0)
    predicted = mean.argmax(-1)
    chosen = probs.gather(-1, predicted.expand(probs.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    se_p = chosen.std(0) / math.sqrt(probs.shape[0])
    se_mi = mutual_information_error(probs, per_sample)
    return mi.numpy(), chosen.mean(0).numpy(), se_mi.numpy(), se_p.numpy(), predicted


def measure(banks: int, reference: int) -> dict:
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(BUNDLED)
    manifest = checkpoint.manifest
    frame = load_flchain(seed=0).test.frame
    x = torch.from_numpy(manifest.preprocessing.transform({name: frame[name] for name in frame.columns}))
    size = manifest.default_samples
    started = time.perf_counter()
    with torch.no_grad():
        ref_engine = MonteCarloEngine(checkpoint.model, bank_size=0)
        ref = ref_engine.run(x, reference, seed=10_000, sampler=Sampler.FRESH).predictive.probs.double()
        ref_mi, _, ref_se, _, _ = _mi_and_p(ref)
        ref_mean = ref.mean(0)
        d_mi, z_mi, z_p, se_mi_all = [], [], [], []
        for seed in range(banks):
            probs = MonteCarloEngine(checkpoint.model, bank_size=size, bank_seed=seed).run(x, size, None, Sampler.BANK)
            probs = probs.predictive.probs.double()
            mi, p, se_mi, se_p, predicted = _mi_and_p(probs)
            p_ref = ref_mean.gather(-1, predicted.unsqueeze(-1)).squeeze(-1).numpy()
            d_mi.append(mi - ref_mi)
            z_mi.append((mi - ref_mi) / se_mi)
            z_p.append((p - p_ref) / se_p)
            se_mi_all.append(se_mi)
    d_mi, z_mi, z_p, se = map(np.stack, (d_mi, z_mi, z_p, se_mi_all))  # (banks, N)
    bias = d_mi.mean(0)  # (N,): what every bank shares
    return {
        "model": BUNDLED.name,
        "rows": int(x.shape[0]),
        "bank_samples": size,
        "banks": banks,
        "reference_samples": reference,
        "reference_mi_se_mean": float(ref_se.mean()),
        "z_mi_std": float(z_mi.std()),
        "z_p_std": float(z_p.std()),
        "z_mi_abs_over_1": float((np.abs(z_mi) > 1).mean()),
        "z_mi_abs_over_2": float((np.abs(z_mi) > 2).mean()),
        "bank_offset_z_mi": [float(v) for v in z_mi.mean(1)],
        "bias_mi_mean": float(bias.mean()),
        "bias_over_reported_error_mean": float((np.abs(bias) / se.mean(0)).mean()),
        "bias_below_reported_error_share": float((np.abs(bias) < se.mean(0)).mean()),
        "relative_mi_gap_mean": float(d_mi.mean() / ref_mi.mean()),
        "reported_mi_error_mean": float(se.mean()),
        "seconds": time.perf_counter() - started,
    }


def render(found: dict) -> str:
    offsets = np.asarray(found["bank_offset_z_mi"])
    return "\n".join(
        [
            "# The frozen bank's error against the error every answer reports",
            "",
            f"`python bench/bank_error.py --banks {found['banks']} --reference {found['reference_samples']}`: the "
            f"bundled model ({found['model']}) on its {found['rows']} test rows, {found['banks']} banks of "
            f"{found['bank_samples']} samples (seeds 0–{found['banks'] - 1}) against one draw of "
            f"{found['reference_samples']:,} (its own MI error {found['reference_mi_se_mean']:.2e} on average, "
            "small beside a bank's). z = (bank − reference) / the error that row's answer reports.",
            "",
            "| figure | value |",
            "|---|--:|",
            f"| std of z, MI, over banks and rows (1: the reported error is the bank's own) | "
            f"{found['z_mi_std']:.3f} |",
            f"| std of z, p(predicted class) | {found['z_p_std']:.3f} |",
            f"| share of \\|z\\| > 1 / > 2, MI (normal: 0.317 / 0.046) | {found['z_mi_abs_over_1']:.3f} / "
            f"{found['z_mi_abs_over_2']:.3f} |",
            f"| a bank's offset shared by its rows, mean z over rows: range over banks | {offsets.min():+.2f} to "
            f"{offsets.max():+.2f} (std {offsets.std():.2f}) |",
            f"| systematic part (mean over banks of bank − reference), MI, mean over rows | "
            f"{found['bias_mi_mean']:+.2e} |",
            f"| \\|systematic part\\| / reported error, mean over rows | "
            f"{found['bias_over_reported_error_mean']:.3f} |",
            f"| rows whose systematic part is below their reported error | "
            f"{found['bias_below_reported_error_share']:.1%} |",
            f"| mean bank − reference MI, relative to the mean MI | {found['relative_mi_gap_mean']:+.2%} |",
            f"| reported MI error, mean over banks and rows | {found['reported_mi_error_mean']:.2e} |",
            "",
            f"Run time {found['seconds']:.0f} s on 1 torch thread.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--banks", type=int, default=32)
    parser.add_argument("--reference", type=int, default=16_384)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    found = measure(args.banks, args.reference)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bank-error.json").write_text(json.dumps(found, indent=2) + "\n")
    (args.out / "bank-error.md").write_text(render(found))
    print(render(found))


if __name__ == "__main__":
    main()
