"""Does the documented command rebuild the bundled model bit for bit?

Usage: python bench/reproduce.py [--runs 2,1,4,2:avx2] [--out bench/results]   (needs sbnn[data,train])

Each run is a torch thread count, optionally with a CPU instruction set to cap torch, MKL and oneDNN at
(``2:avx2``). A run executes the command that docs/training.md documents for models/flchain-mortality (its
first `sbnn train` line, `--out` pointed at a temporary folder) with OMP_NUM_THREADS and MKL_NUM_THREADS set
to the count (torch's intra-op threads follow them), then compares the new folder with the bundled one:
sha256 of weights.safetensors and gate.safetensors, the manifest without the fields that record when and how
fast it was made (`created`, `training.duration_seconds`, `metrics.evaluated`), and metrics.json without its
`evaluated` time. Writes bench/results/reproduce.md and bench/results/reproduce.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "flchain-mortality"
DOCS = ROOT / "docs" / "training.md"
# Fields that say when and how fast a folder was made, not what it holds.
VOLATILE_MANIFEST = (("created",), ("training", "duration_seconds"), ("metrics", "evaluated"))
VOLATILE_METRICS = (("evaluated",),)
# The torch threads and CPU capability models/flchain-mortality was trained with (docs/training.md): the
# default thread count (the physical cores) of the 2-core machine that trained it.
BUNDLED_THREADS = 2
BUNDLED_CPU_CAPABILITY = "AVX512"
# numpy's OpenBLAS kernels then (the gate's covariance): OpenBLAS picks them by CPU model, not by instruction
# set (it ran Haswell kernels on an AVX-512 AMD EPYC and the gate's last bits moved), so the rebuild pins them.
BUNDLED_BLAS_CORE = "SkylakeX"


def documented_command() -> list[str]:
    """The first `sbnn train ... --out models/flchain-mortality ...` line of docs/training.md, as argv."""
    for line in DOCS.read_text().splitlines():
        if line.startswith("sbnn train") and "models/flchain-mortality" in line:
            return shlex.split(line)
    raise SystemExit(f"{DOCS}: no `sbnn train ... models/flchain-mortality` line")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _without(document: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
    document = json.loads(json.dumps(document))  # a deep copy
    for path in paths:
        parent = document
        for key in path[:-1]:
            parent = parent.get(key, {})
        parent.pop(path[-1], None)
    return document


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of the weights, the gate, and the manifest and metrics without their volatile fields."""
    manifest = _without(json.loads((folder / "manifest.json").read_text()), VOLATILE_MANIFEST)
    metrics = _without(json.loads((folder / "metrics.json").read_text()), VOLATILE_METRICS)
    canonical = {
        name: json.dumps(doc, sort_keys=True).encode() for name, doc in (("manifest", manifest), ("metrics", metrics))
    }
    return {
        "weights": sha256(folder / "weights.safetensors"),
        "gate": sha256(folder / "gate.safetensors"),
        **{name: hashlib.sha256(text).hexdigest() for name, text in canonical.items()},
    }


def capability(env: dict[str, str]) -> str:
    """The CPU capability torch dispatches to under ``env``."""
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()


def retrain(threads: int, workdir: Path, isa: str | None = None) -> dict:
    """Run the documented command with ``threads`` torch threads (and CPU instructions capped at ``isa``, e.g.
    "avx2") into ``workdir``; compare the folder with the bundled one."""
    argv = documented_command()
    out = workdir / f"threads-{threads}-{isa or 'native'}" / BUNDLED.name
    argv[argv.index("--out") + 1] = str(out)
    # The `sbnn` entry point (app.cli:main) of this tree, whichever copy of the package is installed.
    argv[:1] = [sys.executable, "-c", "from app.cli import main; main()"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "COLUMNS": "200"}
    if isa is not None:
        env |= {"ATEN_CPU_CAPABILITY": isa, "MKL_ENABLE_INSTRUCTIONS": isa.upper(), "ONEDNN_MAX_CPU_ISA": isa.upper()}
    else:
        env["OPENBLAS_CORETYPE"] = BUNDLED_BLAS_CORE  # over any machine-wide choice (this one sets Haswell)
    load = os.getloadavg()[0]  # other work on the machine stretches the wall times, not the bytes
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    fresh, bundled = folder_digest(out), folder_digest(BUNDLED)
    training = json.loads((out / "manifest.json").read_text())["training"]
    return {
        "threads": threads,
        "isa": isa,
        "cpu_capability": capability(env),
        "command": shlex.join(["sbnn", *argv[3:]]).replace(str(out), "<tmp>/" + BUNDLED.name),
        "seconds": round(seconds, 1),
        "load_before": round(load, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "training_seconds": training["duration_seconds"],
        "best_epoch": training["best_epoch"],
        "epochs_run": training["epochs_run"],
        "best_val_nll": training["best_val_nll"],
        "fresh": fresh,
        "bundled": bundled,
        "same": {name: fresh[name] == bundled[name] for name in fresh},
        "identical": fresh == bundled,
    }


def machine() -> dict:
    import torch

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def render(report: dict) -> str:
    m, runs = report["machine"], report["runs"]
    spec = ",".join(f"{r['threads']}" + (f":{r['isa']}" if r["isa"] else "") for r in runs)
    lines = [
        "# Does the documented command rebuild the bundled model?",
        "",
        f"Command: `python bench/reproduce.py --runs {spec}`. Machine: {m['processor']}, {m['cores']} cores "
        f"(torch CPU capability {m['cpu_capability']}), torch {m['torch']}, Python {m['python']}, {m['platform']}.",
        "",
        f"Each run: `{runs[0]['command']}` (docs/training.md) with OMP_NUM_THREADS = MKL_NUM_THREADS = the thread "
        "count (and, for a capped run, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA), "
        "compared with `models/flchain-mortality`. *manifest* and *metrics*: the JSON without `created`, "
        "`training.duration_seconds` and `evaluated`. Wall time: the whole command (training, gate calibration, "
        "evaluation, figures); training: the loop alone; load: the machine's 1-minute load average before and "
        "after the run (above the core count, other work shared the cores and stretched the times).",
        "",
        "| threads | CPU capability | wall time | training | load | best epoch | weights sha256 | weights | gate "
        "| manifest | metrics |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    word = {True: "same", False: "**differs**"}
    for r in runs:
        same = r["same"]
        lines.append(
            f"| {r['threads']} | {r['cpu_capability']} | {r['seconds']:.0f} s | {r['training_seconds']:.1f} s | "
            f"{_load(r)} | "
            f"{r['best_epoch']} of {r['epochs_run']} | `{r['fresh']['weights'][:16]}…` | {word[same['weights']]} | "
            f"{word[same['gate']]} | {word[same['manifest']]} | {word[same['metrics']]} |"
        )
    lines += ["", f"Bundled weights sha256: `{runs[0]['bundled']['weights']}`."]
    compare = report["compare_run"]
    twins = [str(r["threads"]) for r in runs if r["fresh"]["weights"] == compare["sha256"]]
    lines.append(
        f"`models/{compare['name']}` (the comparison's lowrank run of seed {compare['seed']}, same training config; "
        f"`sbnn compare` trains with `--threads 1`): weights sha256 `{compare['sha256']}`"
        + (f", rebuilt bit for bit by the run(s) with {', '.join(twins)} thread(s)." if twins else ".")
    )
    matched = [f"{r['threads']} thread(s) on {r['cpu_capability']}" for r in runs if r["identical"]]
    lines += [
        "",
        f"Bit-identical rebuild of the bundled model with {'; '.join(matched)}."
        if matched
        else "No run rebuilt the bundled model bit for bit.",
    ]
    return "\n".join(lines) + "\n"


def _load(run: dict) -> str:
    return f"{run['load_before']} → {run['load_after']}" if "load_before" in run else "not recorded"


def compare_run() -> dict:
    """The comparison's served lowrank model: same config as the bundled one, trained by `sbnn compare`."""
    folder = ROOT / "models" / "flchain-lowrank"
    training = json.loads((folder / "manifest.json").read_text())["training"]
    return {"name": folder.name, "seed": training["seed"], "sha256": sha256(folder / "weights.safetensors")}


def parse_runs(text: str) -> list[tuple[int, str | None]]:
    """ "2,1,2:avx2" -> [(2, None), (1, None), (2, "avx2")]."""
    runs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        threads, _, isa = part.partition(":")
        if not threads.isdigit() or int(threads) < 1:
            raise SystemExit(f"--runs: expected THREADS or THREADS:ISA with THREADS ≥ 1, got {part!r}")
        runs.append((int(threads), isa.lower() or None))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default=str(BUNDLED_THREADS),
        help="comma-separated torch thread counts, each optionally :ISA (avx2, avx512) to cap the CPU instructions",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbnn-reproduce-") as workdir:
        runs = []
        for threads, isa in parse_runs(args.runs):
            run = retrain(threads, Path(workdir), isa)
            print(
                f"threads {threads} ({run['cpu_capability']}): {run['seconds']:.0f} s, "
                f"weights {run['fresh']['weights']}, same {run['same']}",
                flush=True,
            )
            runs.append(run)
    report = {"machine": machine(), "compare_run": compare_run(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reproduce.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "reproduce.md").write_text(render(report))
    print(f"wrote {args.out / 'reproduce.md'}")


if __name__ == "__main__":
    main()
