"""The bundled default model: verified, deterministic, its stored metrics reproduce, and its documented
command rebuilds it bit for bit.

Tolerance: 1e-4 absolute on every stored metric. Same machine and torch build give bit-identical numbers;
the tolerance only absorbs float reordering across CPU kinds and BLAS builds. The rebuild is exact, so it runs
only where it can be: the torch build and CPU capability that trained the model (docs/training.md).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from app.bnn.predictive import predict
from app.checkpoint.io import load_checkpoint, sha256_bytes
from app.data.dataset import load_dataset
from app.errors import CheckpointError
from app.evaluate.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "flchain-mortality"
TOLERANCE = 1e-4


def _close(stored: object, fresh: object, where: str) -> None:
    if isinstance(stored, dict):
        assert isinstance(fresh, dict) and stored.keys() == fresh.keys(), where
        for key in stored:
            _close(stored[key], fresh[key], f"{where}.{key}")
    elif isinstance(stored, list):  # the bound's per-layer entries: their floats get the tolerance too
        assert isinstance(fresh, list) and len(stored) == len(fresh), where
        for i, (a, b) in enumerate(zip(stored, fresh, strict=True)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(stored, float):
        assert fresh == pytest.approx(stored, abs=TOLERANCE), where
    else:
        assert stored == fresh, where


def test_bundled_model_loads_with_its_hash() -> None:
    checkpoint = load_checkpoint(BUNDLED)
    manifest = checkpoint.manifest
    assert manifest.weights.sha256 == sha256_bytes((BUNDLED / "weights.safetensors").read_bytes())
    assert manifest.name == "flchain-mortality"
    assert manifest.kind.value == "lowrank" and manifest.ranks[-1] == 1
    assert manifest.default_samples == 512
    gate = manifest.gate
    assert gate.target_fpr == 0.02 and 0 < gate.density.threshold and 0 < gate.epistemic.threshold
    assert (gate.calibration.sampler, gate.calibration.samples, gate.calibration.bank_seed) == ("bank", 512, 0)
    assert gate.achieved["val"].not_accepted <= gate.target_fpr  # the conformal quantile's guarantee on its own split


def test_bundled_model_reproduces_its_stored_metrics() -> None:
    checkpoint = load_checkpoint(BUNDLED)
    stored = json.loads((BUNDLED / "metrics.json").read_text())
    fresh = evaluate(checkpoint, load_dataset(checkpoint.manifest.data), samples=stored["samples"], seed=stored["seed"])
    stored.pop("evaluated")
    _close(stored, fresh, "metrics")
    assert checkpoint.manifest.metrics["test"] == json.loads((BUNDLED / "metrics.json").read_text())["test"]


def test_fixed_seed_gives_identical_predictions_across_two_loads() -> None:
    first, second = load_checkpoint(BUNDLED), load_checkpoint(BUNDLED)
    x = torch.randn(16, first.model.spec.in_features, generator=torch.Generator().manual_seed(0))
    a = predict(first.model, x, 512, torch.Generator().manual_seed(42)).probs
    b = predict(second.model, x, 512, torch.Generator().manual_seed(42)).probs
    assert torch.equal(a, b)


def test_tampered_bundled_weights_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "flchain-mortality"
    shutil.copytree(BUNDLED, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(copy)


def _reproduce():  # noqa: ANN202 - the bench module, loaded by path (bench/ is not an installed package)
    spec = importlib.util.spec_from_file_location("bench_reproduce", ROOT / "bench" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_documented_command_rebuilds_the_bundled_model_bit_for_bit(tmp_path: Path) -> None:
    reproduce = _reproduce()
    trained_with = load_checkpoint(BUNDLED).manifest.training.torch_version
    if torch.__version__ != trained_with:
        pytest.skip(f"bitwise only on the training build: torch {trained_with}, not {torch.__version__}")
    if torch.backends.cpu.get_cpu_capability() != reproduce.BUNDLED_CPU_CAPABILITY:
        pytest.skip(
            f"bitwise only on {reproduce.BUNDLED_CPU_CAPABILITY}: this CPU runs torch's kernels for "
            f"{torch.backends.cpu.get_cpu_capability()}"
        )
    run = reproduce.retrain(reproduce.BUNDLED_THREADS, tmp_path)
    assert run["fresh"]["weights"] == json.loads((BUNDLED / "manifest.json").read_text())["weights"]["sha256"]
    assert run["identical"], f"weights, gate, manifest, metrics the same: {run['same']}"


def test_the_ood_figures_separate_novelty_from_unchanged_rows_and_risk() -> None:
    """Issue 20: creatinine in µmol/L also on the rows it changed (a missing value stays missing), and a
    risk-matched AUROC per score on every OOD set (docs/training.md#novelty)."""
    stored = json.loads((BUNDLED / "metrics.json").read_text())["ood"]
    dataset = load_dataset(load_checkpoint(BUNDLED).manifest.data)
    measured = int(dataset.test.frame["creatinine"].notna().sum())
    assert stored["creatinine-umol"]["changed_rows"]["rows"] == measured < len(dataset.test.y)
    for name, entry in stored.items():
        matched = entry["risk_matched"]
        assert matched["risk_after_matching"] == pytest.approx(0.5, abs=0.05), name  # the matching worked
        assert {"mutual_information", "total_entropy", "predictive_std"} <= matched.keys()
