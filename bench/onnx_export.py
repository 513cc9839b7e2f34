"""The ONNX export of the bundled model, measured: time, graph sizes, parity with torch, and whether two exports
write the same bytes (``python bench/onnx_export.py``; results in bench/results/onnx-export.{md,json}).

Each export runs on a fresh copy of ``models/flchain-mortality`` in a temporary folder (the committed model is
never touched), in this process, one after the other: the first pays torch.export's one-time set-up.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from app.checkpoint.io import load_checkpoint
from app.checkpoint.onnx_export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "flchain-mortality"
RUNS = 3


def main() -> None:
    import onnxruntime
    import onnxscript

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(RUNS):
            folder = Path(tmp) / f"export-{run}"
            shutil.copytree(MODEL, folder)
            checkpoint = load_checkpoint(folder)
            started, cpu_started = time.perf_counter(), time.process_time()
            info = export_onnx(checkpoint).info
            runs.append(
                {
                    "wall_s": time.perf_counter() - started,
                    "cpu_s": time.process_time() - cpu_started,
                    "opset": info.opset,
                    "bank_bytes": info.bytes,
                    "bank_sha256": info.sha256,
                    "bank_max_abs_diff": info.max_abs_diff,
                    "sampling_bytes": info.sampling.bytes if info.sampling else None,
                    "sampling_sha256": info.sampling.sha256 if info.sampling else None,
                    "sampling_max_abs_diff": info.sampling.max_abs_diff if info.sampling else None,
                }
            )
    same_bytes = len({(r["bank_sha256"], r["sampling_sha256"]) for r in runs}) == 1
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"onnxscript {onnxscript.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}"
    )
    out = ROOT / "bench" / "results"
    (out / "onnx-export.json").write_text(
        json.dumps({"machine": machine, "runs": runs, "same_bytes": same_bytes}, indent=2) + "\n"
    )
    lines = [
        "# ONNX export of the bundled model (dynamo exporter)",
        "",
        f"Command: `python bench/onnx_export.py`. Machine: {machine}. {RUNS} exports of fresh copies of "
        "`models/flchain-mortality`, one after the other in one process.",
        "",
        "| run | wall s | CPU s | opset | bank graph bytes | bank max abs diff | sampling graph bytes | "
        "sampling max abs diff |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for i, r in enumerate(runs):
        lines.append(
            f"| {i + 1} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['opset']} | {r['bank_bytes']:,} | "
            f"{r['bank_max_abs_diff']:.1e} | {r['sampling_bytes']:,} | {r['sampling_max_abs_diff']:.1e} |"
        )
    lines += ["", f"Every run wrote the same bytes (both graphs' sha256): {'yes' if same_bytes else 'no'}.", ""]
    (out / "onnx-export.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
