"""ONNX export of the frozen-bank predictive and of the sampling graph: parity with torch for every kind,
recorded, hash-checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.bnn import LayerKind, NetworkSpec
from app.bnn.engine import MonteCarloEngine, Sampler, monte_carlo_error
from app.bnn.local import noise_widths
from app.bnn.predictive import Predictive, class_probabilities, decompose
from app.checkpoint.io import load_checkpoint, read_onnx, save_checkpoint
from app.checkpoint.noise import NoiseStream
from app.checkpoint.onnx_export import (
    DEFAULT_OPSET,
    LOCAL_FILE,
    OUTPUTS,
    SAMPLING_FILE,
    SAMPLING_OUTPUT,
    ExportReport,
    LocalPredictive,
    export_onnx,
    noise_inputs,
)
from app.errors import CheckpointError
from app.serve.predictive_numpy import decompose_numpy, monte_carlo_error_numpy

NOISE_FREE = (LayerKind.DETERMINISTIC, LayerKind.ENSEMBLE)


def checkpoint_of_kind(tiny_checkpoint: Path, tmp_path: Path, kind: LayerKind) -> Path:
    """The tiny checkpoint's manifest with a freshly initialised network of ``kind``."""
    from app.bnn.network import BayesianMLP, parameter_count

    tiny = load_checkpoint(tiny_checkpoint)
    base = tiny.manifest
    spec = NetworkSpec(
        in_features=base.network.in_features,
        hidden=[8, 8],
        kind=kind,
        ranks=[3, 3, 1] if kind is LayerKind.LOWRANK else None,
    )
    model = BayesianMLP(spec, generator=torch.Generator().manual_seed(0))
    manifest = base.model_copy(
        update={
            "kind": kind,
            "network": spec,
            "ranks": spec.layer_ranks(),
            "parameter_count": parameter_count(model),
            "default_samples": 32,
        }
    )
    folder = tmp_path / kind.value
    save_checkpoint(folder, model, manifest, tiny.gate.tensors)  # the gate of the same preprocessing
    return folder


@pytest.fixture(scope="module", params=list(LayerKind), ids=lambda kind: kind.value)
def exported_kind(
    request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LayerKind, Path, ExportReport]:
    """A checkpoint of each kind exported once (a dynamo export takes seconds), shared by the parity tests."""
    kind = request.param
    folder = checkpoint_of_kind(tiny_checkpoint, tmp_path_factory.mktemp("kinds"), kind)
    return kind, folder, export_onnx(load_checkpoint(folder), seed=0)


@pytest.fixture(scope="module")
def exported_tiny(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with both graphs, exported once; tests that tamper with it work on a copy."""
    folder = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    export_onnx(load_checkpoint(folder))
    return folder


def test_onnx_matches_the_torch_bank_for_every_kind(exported_kind: tuple[LayerKind, Path, ExportReport]) -> None:
    _, folder, report = exported_kind
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


def test_tampered_onnx_is_refused(exported_tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exported_tiny, folder)
    path = folder / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = load_checkpoint(folder).manifest  # the weights are untouched: the checkpoint still loads
    with pytest.raises(CheckpointError, match="sha256"):
        read_onnx(folder, manifest)
    recorded = json.loads((folder / "manifest.json").read_text())["onnx"]
    assert recorded["sampler"] == "bank" and recorded["opset"] == DEFAULT_OPSET


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_export_leaves_the_callers_model_alone(tiny_checkpoint: Path, tmp_path: Path, device: str) -> None:
    """The export works on a CPU copy: the checkpoint's network keeps its device, mode and parameters."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    checkpoint = load_checkpoint(folder, device=device)
    model = checkpoint.model.train()
    before = {name: (t.clone(), t.device, t.data_ptr()) for name, t in model.state_dict().items()}
    export_onnx(checkpoint)
    assert model.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, (value, where, pointer) in before.items():
        assert after[name].device == where and after[name].data_ptr() == pointer
        assert torch.equal(after[name], value)


def test_export_refuses_a_loose_match(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    with pytest.raises(CheckpointError, match="differ by"):
        export_onnx(load_checkpoint(folder), tolerance=1e-12)
    assert not (folder / "model.onnx").exists() and not (folder / SAMPLING_FILE).exists()
    assert load_checkpoint(folder).manifest.onnx is None


def test_sampling_graph_matches_torch_on_shared_noise(exported_kind: tuple[LayerKind, Path, ExportReport]) -> None:
    """Form (b): the same noise through onnxruntime and through the torch layers gives the same per-sample
    probabilities; the backend's numpy summaries equal torch's decomposition and Monte Carlo errors."""
    kind, folder, report = exported_kind
    sampling = report.info.sampling
    checkpoint = load_checkpoint(folder)
    model = checkpoint.model
    if kind in NOISE_FREE:
        assert sampling is None and not (folder / SAMPLING_FILE).exists()
        return
    assert sampling is not None and sampling.max_abs_diff <= 1e-4
    assert [(i.name, tuple(i.shape)) for i in sampling.inputs] == [
        (f"noise_{layer}_{block}", spec.shape)
        for layer, specs in enumerate(model.noise_specs())
        for block, spec in enumerate(specs)
    ]
    session = ort.InferenceSession(
        read_onnx(folder, checkpoint.manifest, "sampling"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((7, model.spec.in_features)).astype(np.float32)
    for samples in (1, 100):  # S is a free axis of the graph
        noise = NoiseStream(sampling.inputs, seed=4).next(samples)
        (onnx_probs,) = session.run([SAMPLING_OUTPUT], {"x": x, **noise})
        per_layer, names = [], iter(noise)
        for layer, specs in zip(model.layers, model.noise_specs(), strict=True):
            per_layer.append(layer.noise_type._make(torch.from_numpy(noise[next(names)]) for _ in specs))
        with torch.no_grad():
            logits = model.propagate(torch.from_numpy(x), model.sample_from_noise(per_layer))
        torch_probs = class_probabilities(logits, model.spec.likelihood)
        assert onnx_probs.shape == (samples, 7, 2)
        np.testing.assert_allclose(onnx_probs, torch_probs.numpy(), atol=1e-5)

    predictive = Predictive(torch.from_numpy(onnx_probs))
    mean, total, aleatoric, mi, std = decompose_numpy(onnx_probs)
    u = decompose(predictive)
    for ours, theirs in [
        (mean, predictive.mean),
        (total, u.total),
        (aleatoric, u.aleatoric),
        (mi, u.epistemic),
        (std, u.std),
    ]:
        np.testing.assert_allclose(ours, theirs.double().numpy(), atol=1e-6)
    ours_error, theirs_error = monte_carlo_error_numpy(onnx_probs), monte_carlo_error(predictive)
    assert ours_error.probability == pytest.approx(theirs_error.probability, rel=1e-4)
    assert ours_error.mutual_information == pytest.approx(theirs_error.mutual_information, rel=1e-3, abs=1e-9)


def test_local_graph_is_the_engines_local_sampler(exported_kind: tuple[LayerKind, Path, ExportReport]) -> None:
    """Form (c), low-rank only: the torch module fed the noise the engine's generator would draw gives the
    engine's ``local`` answer bitwise; onnxruntime gives the same on the backend's numpy noise; ``max_rows`` is
    where the engine's auto sampler stops choosing local."""
    kind, folder, report = exported_kind
    local = report.info.local
    if kind is not LayerKind.LOWRANK:
        assert local is None and not (folder / LOCAL_FILE).exists()
        return
    model = load_checkpoint(folder).model
    assert local is not None and local.max_abs_diff <= 1e-4
    assert [(i.name, i.shape) for i in local.inputs] == [
        (f"noise_{layer}_{block}", [width])
        for layer, widths in enumerate(noise_widths(model))
        for block, width in enumerate(widths)
    ]
    engine = MonteCarloEngine(model, 0)
    assert local.max_rows == engine.local_max_rows() >= 1
    assert engine.plan(Sampler.AUTO, local.max_rows, 64, 3).sampler is Sampler.LOCAL
    assert engine.plan(Sampler.AUTO, local.max_rows + 1, 64, 3).sampler is Sampler.FRESH

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((5, model.spec.in_features)).astype(np.float32))
    samples, generator = 40, torch.Generator().manual_seed(8)
    noise = [torch.randn((samples, 5, i.shape[0]), generator=generator) for i in local.inputs]
    with torch.no_grad():
        ours = LocalPredictive(model)(x, *noise)
    assert torch.equal(ours, engine.execute(x, engine.plan(Sampler.LOCAL, 5, samples, 8)).predictive.probs)

    session = ort.InferenceSession(
        read_onnx(folder, load_checkpoint(folder).manifest, "local"), providers=["CPUExecutionProvider"]
    )
    for rows, samples in ((1, 1), (7, 100)):  # N and S are free axes of the graph
        stream = NoiseStream(local.inputs, seed=4, rows=rows).next(samples)
        assert all(stream[i.name].shape == (samples, rows, *i.shape) for i in local.inputs)
        (onnx_probs,) = session.run([SAMPLING_OUTPUT], {"x": x[:1].repeat(rows, 1).numpy(), **stream})
        with torch.no_grad():
            torch_probs = LocalPredictive(model)(x[:1].repeat(rows, 1), *map(torch.from_numpy, stream.values()))
        assert onnx_probs.shape == (samples, rows, 2)
        np.testing.assert_allclose(onnx_probs, torch_probs.numpy(), atol=1e-5)


def test_noise_stream_is_a_prefix_whatever_the_total(tiny_checkpoint: Path) -> None:
    """The k-th chunk of a seed's noise does not depend on how many samples were asked: an adaptive run that
    stops early saw the first samples of the full run."""
    inputs = noise_inputs(load_checkpoint(tiny_checkpoint).model)
    full = NoiseStream(inputs, seed=9)
    short = NoiseStream(inputs, seed=9)
    first, again = full.next(64), short.next(64)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(full.next(64)[inputs[0].name], first[inputs[0].name])


@pytest.mark.parametrize(("graph", "name"), [("sampling", SAMPLING_FILE), ("local", LOCAL_FILE)])
def test_tampered_noise_graph_is_refused(exported_tiny: Path, tmp_path: Path, graph: str, name: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exported_tiny, folder)
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = load_checkpoint(folder).manifest
    read_onnx(folder, manifest)  # the bank graph is untouched
    with pytest.raises(CheckpointError, match="sha256"):
        read_onnx(folder, manifest, graph)  # type: ignore[arg-type]
