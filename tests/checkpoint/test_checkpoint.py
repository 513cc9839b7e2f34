"""Checkpoint round trip and every refusal: the loader names the file and the problem, and never unpickles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.bnn.predictive import predict
from app.checkpoint.io import load_checkpoint, read_manifest, sha256_bytes
from app.errors import CheckpointError


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _rehash(folder: Path) -> None:
    """Make the manifest agree with whatever weights file is there (as an attacker with write access could)."""
    data = (folder / "weights.safetensors").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights"].update(sha256=sha256_bytes(data), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_predictions_across_loads(tiny_checkpoint: Path) -> None:
    first, second = load_checkpoint(tiny_checkpoint), load_checkpoint(tiny_checkpoint)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(5, first.model.spec.in_features, generator=torch.Generator().manual_seed(0))
    p1 = predict(first.model, x, 64, torch.Generator().manual_seed(9)).probs
    p2 = predict(second.model, x, 64, torch.Generator().manual_seed(9)).probs
    assert torch.equal(p1, p2)
    assert not first.model.training
    m = first.manifest
    assert m.weights.sha256 == sha256_bytes((tiny_checkpoint / "weights.safetensors").read_bytes())
    assert m.preprocessing.n_outputs == m.network.in_features
    assert [f.name for f in m.features] == ["x1", "x2", "site"]
    assert m.task.labels == ["no", "yes"]
    assert len(m.gate.epistemic.reference_quantiles) == 101
    assert m.gate.tensors.sha256 == sha256_bytes((tiny_checkpoint / "gate.safetensors").read_bytes())


def test_tampered_gate_tensors_are_refused(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "gate.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(checkpoint_copy)
    assert info.value.path.endswith("gate.safetensors")


def test_missing_gate_tensors_are_refused(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "gate.safetensors").unlink()
    with pytest.raises(CheckpointError, match="gate.tensors file is missing"):
        load_checkpoint(checkpoint_copy)


def test_a_threshold_edited_in_the_manifest_is_refused(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["gate"]["density"]["threshold"] *= 10  # would let far rows through
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="thresholds differ"):
        load_checkpoint(checkpoint_copy)


def test_a_format_1_manifest_is_refused_with_the_command_that_rebuilds_it(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    manifest["ood"] = {"threshold": 0.01}
    del manifest["gate"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="predates the layered OOD gate") as info:
        load_checkpoint(checkpoint_copy)
    message = str(info.value)
    assert "sbnn train --csv " in message and "--target outcome" in message
    assert f"--out {checkpoint_copy}" in message and "--rank 4" in message and "--hidden 16,16" in message


def test_flipped_byte_is_refused(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(checkpoint_copy)
    assert info.value.path.endswith("weights.safetensors")


def test_truncated_weights_are_refused(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(checkpoint_copy)


def test_missing_weights_are_refused(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file is missing"):
        load_checkpoint(checkpoint_copy)


def test_garbage_with_matching_hash_is_refused(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "weights.safetensors").write_bytes(b"\x00" * 64)
    _rehash(checkpoint_copy)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(checkpoint_copy)


def test_non_finite_weights_are_refused(checkpoint_copy: Path) -> None:
    loaded = load_checkpoint(checkpoint_copy)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    key = next(iter(state))
    state[key].view(-1)[0] = float("nan")
    save_file(state, checkpoint_copy / "weights.safetensors")
    _rehash(checkpoint_copy)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(checkpoint_copy)


def test_weights_for_another_network_are_refused(checkpoint_copy: Path) -> None:
    loaded = load_checkpoint(checkpoint_copy)
    state = dict(loaded.model.state_dict())
    state.pop(next(iter(state)))
    save_file(state, checkpoint_copy / "weights.safetensors")
    _rehash(checkpoint_copy)
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_checkpoint(checkpoint_copy)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "unsupported format_version 99"),
        ({"format": "something-else"}, "not an sbnn-checkpoint manifest"),
        ({"surprise": 1}, "invalid field 'surprise'"),
        ({"default_samples": 0}, "invalid field 'default_samples'"),
        ({"kind": "fullrank"}, "differs from network.kind"),
    ],
)
def test_bad_manifest_is_refused(checkpoint_copy: Path, change: dict, message: str) -> None:
    _edit_manifest(checkpoint_copy, **change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(checkpoint_copy)
    assert info.value.path.endswith("manifest.json")


def test_invalid_json_and_missing_manifest_are_refused(checkpoint_copy: Path, tmp_path: Path) -> None:
    (checkpoint_copy / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(checkpoint_copy)
    (checkpoint_copy / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="missing manifest.json"):
        load_checkpoint(checkpoint_copy)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "nowhere")


class _Boom:
    def __reduce__(self) -> tuple:
        return (pytest.fail, ("the loader executed a pickle",))


@pytest.mark.parametrize("file_name", ["weights.pt", "../weights.safetensors"])
def test_manifest_pointing_at_pickle_or_outside_is_refused(checkpoint_copy: Path, file_name: str) -> None:
    (checkpoint_copy / "weights.pt").write_bytes(pickle.dumps(_Boom()))
    manifest = json.loads((checkpoint_copy / "manifest.json").read_text())
    manifest["weights"]["file"] = file_name
    (checkpoint_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="pickle|plain file name"):
        load_checkpoint(checkpoint_copy)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError, match="pickle-style weights are refused") as info:
        load_checkpoint(tmp_path)
    assert info.value.path.endswith("model.pt")
