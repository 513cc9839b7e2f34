"""The model repository: loading verifies the gate too, and says when the server's draws are not the gate's."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from app.serve.repository import ModelRepository, ModelState, ReadyWhen


def _repository(tiny_checkpoint: Path, tmp_path: Path, **options: object) -> ModelRepository:
    shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    repository = ModelRepository(tmp_path, "cpu", **options)  # type: ignore[arg-type]
    repository.load_all()
    return repository


def test_a_model_loads_with_its_gate_and_no_warning_on_the_calibration_bank(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sbnn.serve"):
        entry = _repository(tiny_checkpoint, tmp_path).get("tiny")
    assert entry.gate is not None and entry.gate.spec == entry.manifest.gate
    assert "calibrated on a bank" not in caplog.text


@pytest.mark.parametrize(
    ("options", "served"),
    [
        ({"bank_seed": 5}, "a bank of 64 samples from seed 5"),
        ({"bank_samples": 0}, "fresh (no bank)"),
    ],
)
def test_other_default_draws_than_the_gates_are_logged(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, options: dict, served: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="sbnn.serve"):
        entry = _repository(tiny_checkpoint, tmp_path, **options).get("tiny")
    assert entry.state is ModelState.READY  # a warning, not a refusal
    assert "its gate was calibrated on a bank of 64 samples from seed 0" in caplog.text and served in caplog.text


def test_a_model_whose_gate_tensors_were_modified_is_not_ready(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    gate = tmp_path / "tiny" / "gate.safetensors"
    data = bytearray(gate.read_bytes())
    data[-2] ^= 0x10
    gate.write_bytes(bytes(data))
    repository = ModelRepository(tmp_path, "cpu")
    repository.load_all()
    entry = repository.lookup("tiny")
    assert entry.state is ModelState.FAILED and "gate.safetensors" in entry.reason and "sha256" in entry.reason


def test_a_loader_failure_of_any_kind_fails_that_model_only_and_is_logged(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FileNotFoundError from deep inside a load (a read-only root filesystem's tempdir, say) used to escape
    the loader and leave every model "loading" for ever."""
    shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    shutil.copytree(tiny_checkpoint, tmp_path / "unlucky")
    manifest = tmp_path / "unlucky" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"name": "tiny"', '"name": "unlucky"', 1))
    repository = ModelRepository(tmp_path, "cpu")
    real_open = repository._open  # noqa: SLF001

    def opening(folder: Path) -> object:
        if folder.name == "unlucky":
            raise FileNotFoundError("No usable temporary directory found")
        return real_open(folder)

    monkeypatch.setattr(repository, "_open", opening)
    with caplog.at_level(logging.INFO, logger="sbnn.serve"):
        repository.load_all()
    unlucky = repository.lookup("unlucky")
    assert unlucky.state is ModelState.FAILED
    assert unlucky.reason == "FileNotFoundError: No usable temporary directory found"
    assert repository.lookup("tiny").state is ModelState.READY
    assert not repository.ready  # every model asked for must be ready (SBNN_READY_WHEN=all) ...
    repository.ready_when = ReadyWhen.ANY
    assert repository.ready  # ... or one of them (any)
    assert "model unlucky not ready: No usable temporary directory found" in caplog.text
    assert "model tiny ready: version" in caplog.text and "loaded in" in caplog.text
    assert "1 models ready, 1 failed (unlucky)" in caplog.text
