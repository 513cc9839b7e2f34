"""ONNX export of the frozen-bank predictive: parity with torch for every kind, recorded, hash-checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.bnn import LayerKind, NetworkSpec
from app.bnn.engine import MonteCarloEngine, Sampler
from app.bnn.predictive import decompose
from app.checkpoint.io import load_checkpoint, read_onnx, save_checkpoint
from app.checkpoint.onnx_export import OUTPUTS, export_onnx
from app.errors import CheckpointError


def checkpoint_of_kind(tiny_checkpoint: Path, tmp_path: Path, kind: LayerKind) -> Path:
    """The tiny checkpoint's manifest with a freshly initialised network of ``kind``."""
    from app.bnn.network import BayesianMLP, parameter_count

    base = load_checkpoint(tiny_checkpoint).manifest
    spec = NetworkSpec(in_features=base.network.in_features, hidden=[8, 8], kind=kind,
                       ranks=[3, 3, 1] if kind is LayerKind.LOWRANK else None)
    model = BayesianMLP(spec, generator=torch.Generator().manual_seed(0))
    manifest = base.model_copy(update={"kind": kind, "network": spec, "ranks": spec.layer_ranks(),
                                       "parameter_count": parameter_count(model), "default_samples": 32})
    folder = tmp_path / kind.value
    save_checkpoint(folder, model, manifest)
    return folder


@pytest.mark.parametrize("kind", list(LayerKind))
def test_onnx_matches_the_torch_bank_for_every_kind(tiny_checkpoint: Path, tmp_path: Path, kind: LayerKind) -> None:
    folder = checkpoint_of_kind(tiny_checkpoint, tmp_path, kind)
    report = export_onnx(load_checkpoint(folder), seed=0)
    assert report.info.max_abs_diff <= 1e-4
    checkpoint = load_checkpoint(folder)
    assert checkpoint.manifest.onnx == report.info
    session = ort.InferenceSession(read_onnx(folder, checkpoint.manifest), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((9, checkpoint.model.spec.in_features)).astype(np.float32)
    probs, total, aleatoric, mi, std = session.run(OUTPUTS, {"x": x})
    # The graph's bank is the serving engine's bank (same seed, same draws): the same answers.
    engine = MonteCarloEngine(checkpoint.model, bank_size=checkpoint.manifest.default_samples, bank_seed=0)
    result = engine.run(torch.from_numpy(x), checkpoint.manifest.default_samples, None, Sampler.BANK)
    u = decompose(result.predictive)
    np.testing.assert_allclose(probs, result.predictive.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(mi, u.epistemic.numpy(), atol=1e-5)
    np.testing.assert_allclose(total, u.total.numpy(), atol=1e-5)
    np.testing.assert_allclose(std, u.std.numpy(), atol=1e-5)
    assert probs.shape == (9, 2) and aleatoric.shape == (9,)


def test_tampered_onnx_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    export_onnx(load_checkpoint(folder))
    path = folder / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = load_checkpoint(folder).manifest  # the weights are untouched: the checkpoint still loads
    with pytest.raises(CheckpointError, match="sha256"):
        read_onnx(folder, manifest)
    recorded = json.loads((folder / "manifest.json").read_text())["onnx"]
    assert recorded["sampler"] == "bank" and recorded["opset"] == 17


def test_export_refuses_a_loose_match(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    with pytest.raises(CheckpointError, match="differ by"):
        export_onnx(load_checkpoint(folder), tolerance=1e-12)
    assert not (folder / "model.onnx").exists()
    assert load_checkpoint(folder).manifest.onnx is None
