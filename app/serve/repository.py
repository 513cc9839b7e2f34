"""The model repository: every checkpoint folder under the models directory, loaded, verified and warmed.

A folder that fails verification stays listed as not ready with the reason; the others keep serving.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from app.checkpoint.files import read_gate
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.gate.gate import Gate
from app.serve.backend import Backend, BackendKind
from app.serve.errors import ModelNotFound, ModelNotReady

log = logging.getLogger("sbnn.serve")


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ServedModel:
    """One entry of the repository; ``backend`` and ``gate`` are set once the folder verified and warmed up."""

    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    backend: Backend | None = None
    gate: Gate | None = None

    @property
    def manifest(self) -> Manifest:
        if self.backend is None:
            raise ModelNotReady(self.name, self.reason or self.state.value)
        return self.backend.manifest


def client_reason(folder: Path, exc: Exception) -> str:
    """Why ``folder`` failed, as clients read it (GET /v1/models, 503 answers): files named relative to the
    model folder, no server path anywhere in the text."""
    text = str(exc)
    if isinstance(exc, CheckpointError):
        where = Path(exc.path)
        try:
            relative = where.relative_to(folder)
        except ValueError:
            relative = Path(where.name) if where.name else None
        text = exc.reason if relative is None or str(relative) == "." else f"{relative}: {exc.reason}"
    for prefix in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
        text = text.replace(prefix + os.sep, "").replace(prefix, folder.name)
    root = str(folder.parent)
    return text.replace(root + os.sep, "") if root not in {"", ".", os.sep} else text


class ModelRepository:
    """Maps model names to loaded models; ``ready`` once every folder has been tried."""

    def __init__(
        self,
        root: Path,
        device: str = "auto",
        bank_samples: int | None = None,
        bank_seed: int = 0,
        backend: BackendKind = BackendKind.AUTO,
    ) -> None:
        self.root = root
        self.device = device  # resolved by the torch backend (the onnx backend runs on the CPU)
        if backend is BackendKind.AUTO:
            backend = BackendKind.TORCH if importlib.util.find_spec("torch") else BackendKind.ONNX
        self.backend_kind = backend
        self.bank_samples = bank_samples  # None: each model's default_samples
        self.bank_seed = bank_seed
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self.loaded = threading.Event()

    def discover(self) -> list[ServedModel]:
        """List checkpoint folders (sub-folders of the root, hidden ones skipped) as LOADING entries."""
        if not self.root.is_dir():
            log.warning("model directory %s does not exist; serving no models", self.root)
            return []
        entries = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entry = ServedModel(name=folder.name, path=folder)
            entries.append(entry)
            with self._lock:
                self._models[entry.name] = entry
        return entries

    def load_all(self) -> None:
        """Verify, load and warm every discovered folder (blocking; run it off the event loop)."""
        try:
            entries = self.discover()
            for entry in entries:
                self._load(entry)
            failed = [e.name for e in entries if e.state is ModelState.FAILED]
            log.info(
                "%d models ready, %d failed%s", len(entries) - len(failed), len(failed),
                f" ({', '.join(failed)})" if failed else "",
            )  # fmt: skip
        finally:
            self.loaded.set()

    def _load(self, entry: ServedModel) -> None:
        started = time.perf_counter()
        try:
            backend = self._open(entry.path)
            if backend.manifest.name != entry.name:
                # The folder name is the URL name; a manifest that disagrees would make replay ambiguous.
                raise CheckpointError(
                    str(entry.path / "manifest.json"),
                    f"manifest name '{backend.manifest.name}' differs from its folder name",
                )
            gate = read_gate(entry.path, backend.manifest)
        except Exception as exc:  # any loader failure fails this model only: the others keep loading
            entry.state, entry.reason = ModelState.FAILED, client_reason(entry.path, exc)
            if not isinstance(exc, CheckpointError | ValueError | RuntimeError):
                entry.reason = f"{type(exc).__name__}: {entry.reason}"  # an unexpected kind: say which
            log.error("model %s not ready: %s", entry.name, exc)  # the server's log keeps the full path
            return
        calibration = gate.spec.calibration
        if backend.default_bank != (calibration.samples, calibration.bank_seed):
            bank = backend.default_bank
            served = "fresh (no bank)" if bank is None else f"a bank of {bank[0]} samples from seed {bank[1]}"
            log.warning(
                "model %s: its gate was calibrated on a bank of %d samples from seed %d, this server's default "
                "draws are %s; the gate's false-positive rate then holds only approximately",
                entry.name,
                calibration.samples,
                calibration.bank_seed,
                served,
            )
        entry.backend, entry.gate, entry.state, entry.reason = backend, gate, ModelState.READY, ""
        m, bank = backend.manifest, backend.default_bank
        log.info(
            "model %s ready: version %s, %s, %s backend, bank %s, weights %s, loaded in %.1f s",
            entry.name, m.version, m.kind.value, backend.kind.value,
            "none" if bank is None else f"{bank[0]} samples from seed {bank[1]}",
            m.weights.sha256[:12], time.perf_counter() - started,
        )  # fmt: skip

    def _open(self, folder: Path) -> Backend:
        # Imported on use: a torch-free install never imports the torch backend.
        if self.backend_kind is BackendKind.ONNX:
            from app.serve.backend_onnx import OnnxBackend

            return OnnxBackend.load(folder)
        from app.device import resolve_device
        from app.serve.backend_torch import TorchBackend

        return TorchBackend.load(folder, resolve_device(self.device), self.bank_samples, self.bank_seed)

    def get(self, name: str) -> ServedModel:
        """The ready model called ``name``: ModelNotFound (404) or ModelNotReady (503) otherwise."""
        entry = self.lookup(name)
        if entry.state is not ModelState.READY:
            raise ModelNotReady(name, entry.reason or entry.state.value)
        return entry

    def lookup(self, name: str) -> ServedModel:
        """The entry called ``name`` in whatever state."""
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def entries(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def names(self) -> set[str]:
        with self._lock:
            return set(self._models)

    @property
    def ready(self) -> bool:
        """True once every folder was tried and every loadable model is ready (failed ones are excluded)."""
        return self.loaded.is_set() and all(e.state is not ModelState.LOADING for e in self.entries())
