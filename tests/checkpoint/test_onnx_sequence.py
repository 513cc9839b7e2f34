"""ONNX export of a sequence (LSTM) checkpoint's frozen bank: the graph answers as the torch engine's bank on
ragged sequences, for every kind, and is recorded, hash-checked and refused when it cannot be trusted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sequence_tables import write_visits  # noqa: E402

from app.bnn import LayerKind  # noqa: E402
from app.bnn.network import parameter_count  # noqa: E402
from app.bnn.recurrent import BayesianLSTM  # noqa: E402
from app.bnn.sequence_engine import SequenceMonteCarloEngine  # noqa: E402
from app.bnn.spec import Sampler, SequenceNetworkSpec  # noqa: E402
from app.checkpoint import onnx_sequence  # noqa: E402
from app.checkpoint.io import load_checkpoint, read_onnx, save_checkpoint  # noqa: E402
from app.checkpoint.manifest import Manifest  # noqa: E402
from app.checkpoint.onnx_export import ExportReport, export_onnx  # noqa: E402
from app.checkpoint.onnx_sequence import SEQUENCE_OUTPUT, export_sequence_onnx  # noqa: E402
from app.data.sequence_table import load_sequence_table  # noqa: E402
from app.errors import CheckpointError  # noqa: E402
from app.train.config import TrainConfig  # noqa: E402
from app.train.sequence_pipeline import train_sequence_checkpoint  # noqa: E402


def _train(folder: Path, continuous: bool, kind: LayerKind) -> Path:
    dataset = load_sequence_table(write_visits(folder / "visits.csv", continuous, patients=60), "y", "patient", "day")
    config = TrainConfig(
        hidden=[8], rank=3, epochs=2, kl_warmup_epochs=1, default_samples=16, val_samples=4, batch_size=32,
        device="cpu", kind=kind,
    )  # fmt: skip
    train_sequence_checkpoint(dataset, config, folder / "m")
    return folder / "m"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A low-rank regression and a full-rank classifier, trained briefly (once per module)."""
    root = tmp_path_factory.mktemp("seq")
    (root / "reg").mkdir()
    (root / "cls").mkdir()
    return {
        "regression-lowrank": _train(root / "reg", continuous=True, kind=LayerKind.LOWRANK),
        "classifier-fullrank": _train(root / "cls", continuous=False, kind=LayerKind.FULLRANK),
    }


def _with_kind(source: Path, folder: Path, kind: LayerKind, layers: int) -> Path:
    """``source``'s manifest around a freshly initialised LSTM of ``kind`` (same inputs and task)."""
    base = load_checkpoint(source)
    spec = SequenceNetworkSpec(
        **{**base.manifest.network.model_dump(), "kind": kind, "layers": layers, "ranks": None, "members": 3}
    )
    model = BayesianLSTM(spec, generator=torch.Generator().manual_seed(0))
    update = {"kind": kind, "network": spec, "ranks": spec.map_ranks(), "parameter_count": parameter_count(model)}
    save_checkpoint(folder, model, base.manifest.model_copy(update=update), base.gate.tensors)
    return folder


CASES = ["regression-lowrank", "classifier-fullrank", "mcdropout", "ensemble", "deterministic"]


@pytest.fixture(scope="module", params=CASES)
def exported(
    request: pytest.FixtureRequest, trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ExportReport]:
    """Each case exported once through the public ``export_onnx`` (it dispatches on the sequence section)."""
    folder = tmp_path_factory.mktemp("exported") / request.param
    if request.param in trained:
        shutil.copytree(trained[request.param], folder)
    else:
        # 2 layers for MC dropout: its first input map has no mask (None in the bank), the second one has.
        layers = 2 if request.param == "mcdropout" else 1
        _with_kind(trained["regression-lowrank"], folder, LayerKind(request.param), layers)
    return folder, export_onnx(load_checkpoint(folder))


def _ragged(checkpoint_manifest: Manifest, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded sequences (rows, T, d) with ragged lengths holding T and 1 (when rows allow)."""
    steps, features = checkpoint_manifest.sequence.max_length, checkpoint_manifest.network.in_features
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, steps, features)).astype(np.float32)
    lengths = rng.integers(1, steps + 1, size=rows).astype(np.int64)
    lengths[: min(rows, 2)] = [steps, 1][: min(rows, 2)]
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


def test_the_graph_is_the_torch_engines_bank_on_ragged_sequences(exported: tuple[Path, ExportReport]) -> None:
    folder, report = exported
    checkpoint = load_checkpoint(folder)  # the checkpoint still loads, its manifest validates with the record
    manifest = checkpoint.manifest
    assert manifest.onnx == report.info and Manifest.model_validate(manifest.model_dump()) == manifest
    info = report.info
    assert info.max_abs_diff <= info.tolerance == 1e-4
    assert info.sampling is None and info.local is None and info.sampler == "bank" and info.bank_seed == 0
    samples = checkpoint.model.num_samples(manifest.default_samples)
    assert info.samples == samples
    session = ort.InferenceSession(read_onnx(folder, manifest), providers=["CPUExecutionProvider"])
    engine = SequenceMonteCarloEngine(checkpoint.model, samples, bank_seed=0)
    for rows in (1, 5):
        x, lengths = _ragged(manifest, rows, seed=rows)
        (out,) = session.run([SEQUENCE_OUTPUT], {"x": x, "lengths": lengths})
        expected, _ = engine.run(torch.from_numpy(x), torch.from_numpy(lengths), samples, None, Sampler.BANK)
        assert out.shape == (samples, rows, manifest.network.head_features)
        np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
        # Past a row's length its state is held: what lies in the padding changes nothing.
        noisy = x + (np.arange(x.shape[1])[None, :, None] >= lengths[:, None, None]) * np.float32(3.0)
        (again,) = session.run([SEQUENCE_OUTPUT], {"x": noisy.astype(np.float32), "lengths": lengths})
        np.testing.assert_allclose(again, out, atol=1e-6)


def test_a_point_estimate_bank_is_its_members(exported: tuple[Path, ExportReport]) -> None:
    folder, report = exported
    kind = load_checkpoint(folder).manifest.kind
    members = {LayerKind.DETERMINISTIC: 1, LayerKind.ENSEMBLE: 3}
    assert report.info.samples == members.get(kind, 16)


def test_export_refuses_a_loose_match_and_writes_nothing(trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(trained["regression-lowrank"], folder)
    with pytest.raises(CheckpointError, match="differ by"):
        export_onnx(load_checkpoint(folder), tolerance=1e-12)
    assert load_checkpoint(folder).manifest.onnx is None and not (folder / "model.onnx").exists()


def test_export_refuses_a_bank_too_large_for_one_file(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(trained["regression-lowrank"], folder)
    monkeypatch.setattr(onnx_sequence, "MAX_CONSTANT_BYTES", 1000)  # instead of a real 2 GiB bank
    with pytest.raises(CheckpointError, match="2 GiB.*--samples"):
        export_onnx(load_checkpoint(folder))
    assert load_checkpoint(folder).manifest.onnx is None


def test_samples_set_the_bank_and_the_callers_model_is_left_alone(trained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(trained["regression-lowrank"], folder)
    checkpoint = load_checkpoint(folder)
    before = {k: v.clone() for k, v in checkpoint.model.state_dict().items()}
    report = export_onnx(checkpoint, samples=3)
    assert report.info.samples == 3 and not checkpoint.model.training
    assert all(torch.equal(v, before[k]) for k, v in checkpoint.model.state_dict().items())
    x, lengths = _ragged(checkpoint.manifest, 4, seed=2)
    session = ort.InferenceSession(report.path.read_bytes(), providers=["CPUExecutionProvider"])
    assert session.run([SEQUENCE_OUTPUT], {"x": x, "lengths": lengths})[0].shape[0] == 3


def test_the_sequence_exporter_refuses_an_mlp(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not a sequence"):
        export_sequence_onnx(load_checkpoint(tiny_checkpoint))
