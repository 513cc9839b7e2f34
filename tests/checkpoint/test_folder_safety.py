"""Model folders: every file the manifest names must be a regular file (no symbolic link, directory or FIFO)
of the manifest's size, checked before a byte is read; a failed model's reason names files relative to its
folder (no server path), and the other models keep serving."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from app.checkpoint import files
from app.checkpoint.io import load_checkpoint, read_manifest
from app.errors import CheckpointError
from app.serve.repository import ModelRepository, ModelState, client_reason

FILES = ["weights.safetensors", "gate.safetensors"]


def _swap_for_symlink(folder: Path, name: str, tmp_path: Path) -> None:
    """Move ``name`` out of the folder and leave a link to it: the same bytes, so only the link is wrong."""
    outside = tmp_path / f"outside-{name}"
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)


@pytest.mark.parametrize("name", [*FILES, "manifest.json"])
def test_a_symlinked_file_is_refused(checkpoint_copy: Path, tmp_path: Path, name: str) -> None:
    _swap_for_symlink(checkpoint_copy, name, tmp_path)
    with pytest.raises(CheckpointError, match="symbolic link") as info:
        load_checkpoint(checkpoint_copy)
    assert info.value.path.endswith(name)


@pytest.mark.parametrize("name", FILES)
def test_a_directory_in_place_of_a_file_is_refused(checkpoint_copy: Path, name: str) -> None:
    (checkpoint_copy / name).unlink()
    (checkpoint_copy / name).mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(checkpoint_copy)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_place_of_the_weights_is_refused_without_blocking(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "weights.safetensors").unlink()
    os.mkfifo(checkpoint_copy / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(checkpoint_copy)


@pytest.mark.parametrize("name", FILES)
def test_a_file_of_another_size_is_refused_before_it_is_read(
    checkpoint_copy: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    with (checkpoint_copy / name).open("ab") as handle:
        handle.write(b"\0" * 4096)  # grown: a bound on what is read, not only on what is hashed
    real = files._read_at_most
    read: list[Path] = []

    def spy(path: Path, limit: int, where: str) -> bytes:
        read.append(path)
        return real(path, limit, where)

    monkeypatch.setattr(files, "_read_at_most", spy)
    with pytest.raises(CheckpointError, match="differs from the manifest's") as info:
        load_checkpoint(checkpoint_copy)
    assert info.value.path.endswith(name)
    assert checkpoint_copy / name not in read


def test_no_more_than_the_recorded_bytes_are_read(checkpoint_copy: Path) -> None:
    """A file that grows between the size check and the read is still read only up to the size (and one)."""
    manifest = read_manifest(checkpoint_copy)
    path = checkpoint_copy / "weights.safetensors"
    with path.open("ab") as handle:
        handle.write(b"\0" * 1_000_000)
    data = files._read_at_most(path, manifest.weights.bytes, "weights")
    assert len(data) == manifest.weights.bytes + 1


def test_an_oversized_manifest_is_refused_before_it_is_read(
    checkpoint_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(CheckpointError, match="100-byte limit"):
        read_manifest(checkpoint_copy)


def test_an_intact_folder_still_loads(checkpoint_copy: Path) -> None:
    assert load_checkpoint(checkpoint_copy).manifest.weights.bytes == (checkpoint_copy / FILES[0]).stat().st_size


def _repository_with(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_checkpoint, root / "tiny")
    linked = root / "linked"
    shutil.copytree(tiny_checkpoint, linked)
    manifest = json.loads((linked / "manifest.json").read_text())
    manifest["name"] = "linked"
    (linked / "manifest.json").write_text(json.dumps(manifest))
    _swap_for_symlink(linked, "weights.safetensors", tmp_path)
    return root


def test_a_symlinked_model_fails_alone_and_its_reason_names_no_server_path(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    root = _repository_with(tiny_checkpoint, tmp_path)
    repository = ModelRepository(root, device="cpu")
    repository.load_all()
    assert repository.lookup("tiny").state is ModelState.READY
    failed = repository.lookup("linked")
    assert failed.state is ModelState.FAILED
    assert failed.reason.startswith("weights.safetensors: weights file is a symbolic link")
    assert str(tmp_path) not in failed.reason and str(root) not in failed.reason


def test_client_reason_is_relative_to_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "m"
    cases = [
        (CheckpointError(str(folder / "weights.safetensors"), "sha256 differs"), "weights.safetensors: sha256 differs"),
        (CheckpointError(str(folder), "not a checkpoint folder"), "not a checkpoint folder"),
        (
            CheckpointError(str(folder / "manifest.json"), f"rebuild: sbnn train --out {folder}"),
            "manifest.json: rebuild: sbnn train --out m",
        ),
        (CheckpointError("/elsewhere/x.onnx", "no such file"), "x.onnx: no such file"),
        (RuntimeError(f"cannot open {folder / 'model.onnx'}"), "cannot open model.onnx"),
    ]
    for exc, expected in cases:
        assert client_reason(folder, exc) == expected
        assert str(tmp_path) not in client_reason(folder, exc)
