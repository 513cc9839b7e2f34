"""The model repository: every model folder under the root, its versions loaded, verified and warmed.

A (re)load reads the model's versions from disk (``app.serve.versions``), verifies and warms each beside what
is serving, then swaps the whole set in at once: a request holds the ``ServedModel`` it started with, so
in-flight and queued requests finish on the old version and new ones see the new. A reload is all or nothing:
when a version fails, the old set keeps serving and the failure is reported (a model with nothing serving shows
the failed version with its reason). Loads and unloads run one at a time, on the repository's own thread.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from app.checkpoint.files import read_gate, read_tokenizer
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.gate.gate import Gate
from app.serve.backend import Backend, BackendKind
from app.serve.errors import ModelNotFound, ModelNotReady
from app.serve.versions import VersionPolicy, select, version_folders, version_order

if TYPE_CHECKING:  # the tokenizer is imported on use, for a text model
    from app.data.tokenizer import TextEncoder

log = logging.getLogger("sbnn.serve")


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"  # taken out of service by a repository request; not part of readiness


class ReadyWhen(str, Enum):
    ALL = "all"  # the server is ready when every model it was asked to serve is ready
    ANY = "any"  # ... when at least one is


@dataclass
class ServedModel:
    """One version of one model; ``backend`` and ``gate`` (and a text model's ``encoder``, its tokenizer) are set
    once it verified and warmed up, and a ready entry never changes again (a reload makes a new one).
    ``version`` is "" while unknown (its manifest unread)."""

    name: str
    path: Path
    version: str = ""
    state: ModelState = ModelState.LOADING
    reason: str = ""
    backend: Backend | None = None
    gate: Gate | None = None
    encoder: TextEncoder | None = None

    @property
    def manifest(self) -> Manifest:
        if self.backend is None:
            raise ModelNotReady(self.name, self.reason or self.state.value)
        return self.backend.manifest


@dataclass(frozen=True)
class LoadOutcome:
    """What a (re)load of one model did: ``serving``, the versions now served (the old ones when ``kept``),
    and ``failed``, the versions that did not load, with their reasons."""

    name: str
    serving: list[str]
    failed: list[ServedModel] = field(default_factory=list)
    kept: bool = False  # a version failed and the versions served before keep serving

    @property
    def error(self) -> str:
        reasons = "; ".join(f"version {m.version or '?'}: {m.reason}" if m.version else m.reason for m in self.failed)
        kept = f" (version {', '.join(self.serving)} keeps serving)" if self.kept else ""
        return f"model '{self.name}' failed to load: {reasons}{kept}"


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
    """Maps model names to their served versions; ``loaded`` once the start-up pass has tried every folder."""

    def __init__(
        self,
        root: Path,
        device: str = "auto",
        bank_samples: int | None = None,
        bank_seed: int = 0,
        backend: BackendKind = BackendKind.AUTO,
        policy: VersionPolicy = VersionPolicy.LATEST,
        pinned: dict[str, list[str]] | None = None,
        ready_when: ReadyWhen = ReadyWhen.ALL,
    ) -> None:
        self.root = root
        self.device = device  # resolved by the torch backend (the onnx backend runs on the CPU)
        if backend is BackendKind.AUTO:
            backend = BackendKind.TORCH if importlib.util.find_spec("torch") else BackendKind.ONNX
        self.backend_kind = backend
        self.bank_samples = bank_samples  # None: each model's default_samples
        self.bank_seed = bank_seed
        self.policy, self.pinned, self.ready_when = policy, pinned or {}, ready_when
        self._models: dict[str, dict[str, ServedModel]] = {}  # name -> version -> entry; replaced, never edited
        self._last_error: dict[str, str] = {}  # name -> why its last reload failed while the old set serves
        self._lock = threading.Lock()
        self.loaded = threading.Event()
        # Loads and unloads, one at a time, off the event loop and off the compute thread (serving goes on).
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbnn-load")

    def folders(self) -> list[Path]:
        """The model folders on disk: sub-folders of the root, hidden ones skipped."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load_all(self) -> None:
        """Load every model folder (blocking; run it on ``loader``), then log the summary."""
        try:
            folders = self.folders()
            with self._lock:
                for folder in folders:
                    self._models.setdefault(folder.name, {"": ServedModel(folder.name, folder)})
            outcomes = [self.load(folder.name) for folder in folders]
            failed = [o.name for o in outcomes if o.failed]
            log.info(
                "%d models ready, %d failed%s", len(outcomes) - len(failed), len(failed),
                f" ({', '.join(failed)})" if failed else "",
            )  # fmt: skip
        finally:
            self.loaded.set()

    def load(self, name: str) -> LoadOutcome:
        """(Re)load the model ``name`` from disk and swap it in atomically (blocking; run it on ``loader``);
        ModelNotFound when the root holds no such folder."""
        folder = self.root / name
        if name.startswith(".") or os.sep in name or not folder.is_dir():
            raise ModelNotFound(name)
        chosen, missing = select(version_folders(folder), self.policy, self.pinned.get(name))
        with self._lock:
            old = self._models.get(name, {})
            if not any(m.state is ModelState.READY for m in old.values()):
                self._models[name] = {"": ServedModel(name, folder)}  # nothing serving: show it loading
        fresh = [self._load(name, version, path) for version, path in chosen]
        fresh += [ServedModel(name, folder / v, v, ModelState.FAILED, "pinned version not found") for v in missing]
        if not fresh:
            fresh = [ServedModel(name, folder, "", ModelState.FAILED, "no version folder to serve")]
        failed = [m for m in fresh if m.state is not ModelState.READY]
        with self._lock:
            kept = bool(failed) and any(m.state is ModelState.READY for m in old.values())
            if kept:
                outcome = LoadOutcome(name, sorted(old, key=version_order), failed, kept=True)
                self._last_error[name] = outcome.error
            else:
                self._models[name] = {m.version: m for m in fresh}
                self._last_error.pop(name, None)
                outcome = LoadOutcome(name, [m.version for m in fresh if m not in failed], failed)
        if kept:
            log.error("%s", outcome.error)
        return outcome

    def unload(self, name: str) -> None:
        """Take every version of ``name`` out of service (requests in flight finish on it)."""
        with self._lock:
            if name not in self._models:
                raise ModelNotFound(name)
            reason = f"unloaded: POST /v2/repository/models/{name}/load serves it again"
            self._models[name] = {"": ServedModel(name, self.root / name, "", ModelState.UNLOADED, reason)}
            self._last_error.pop(name, None)
        log.info("model %s unloaded", name)

    def _load(self, name: str, version: str | None, path: Path) -> ServedModel:
        """One checkpoint folder, verified and warmed, as a new entry (FAILED with its reason on any error)."""
        started = time.perf_counter()
        entry = ServedModel(name, path, version or "")
        try:
            backend = self._open(path)
            manifest = backend.manifest
            if manifest.name != name:
                # The folder name is the URL name; a manifest that disagrees would make replay ambiguous.
                raise CheckpointError(
                    str(path / "manifest.json"), f"manifest name '{manifest.name}' differs from its folder name"
                )
            if version is not None and manifest.version != version:
                raise CheckpointError(
                    str(path / "manifest.json"), f"manifest version '{manifest.version}' differs from its folder name"
                )
            pins = self.pinned.get(name)
            if version is None and pins is not None and manifest.version not in pins:
                raise CheckpointError(str(path / "manifest.json"), f"version {manifest.version} is not pinned")
            entry.version = manifest.version
            gate = read_gate(path, manifest)
            encoder = None if manifest.text is None else read_tokenizer(path, manifest)
        except Exception as exc:  # any loader failure fails this version only: the others keep loading
            entry.state, entry.reason = ModelState.FAILED, client_reason(path, exc)
            if not isinstance(exc, CheckpointError | ValueError | RuntimeError):
                entry.reason = f"{type(exc).__name__}: {entry.reason}"  # an unexpected kind: say which
            log.error("model %s not ready: %s", name, exc)  # the server's log keeps the full path
            return entry
        self._check_calibration(name, backend, gate)
        entry.backend, entry.gate, entry.encoder, entry.state = backend, gate, encoder, ModelState.READY
        bank = backend.default_bank
        log.info(
            "model %s ready: version %s, %s, %s backend, bank %s, weights %s, loaded in %.1f s",
            name, manifest.version, manifest.kind.value, backend.kind.value,
            "none" if bank is None else f"{bank[0]} samples from seed {bank[1]}",
            manifest.weights.sha256[:12], time.perf_counter() - started,
        )  # fmt: skip
        return entry

    @staticmethod
    def _check_calibration(name: str, backend: Backend, gate: Gate) -> None:
        calibration = gate.spec.calibration
        if backend.default_bank != (calibration.samples, calibration.bank_seed):
            bank = backend.default_bank
            served = "fresh (no bank)" if bank is None else f"a bank of {bank[0]} samples from seed {bank[1]}"
            log.warning(
                "model %s: its gate was calibrated on a bank of %d samples from seed %d, this server's default "
                "draws are %s; the gate's false-positive rate then holds only approximately",
                name,
                calibration.samples,
                calibration.bank_seed,
                served,
            )

    def _open(self, folder: Path) -> Backend:
        # Imported on use: a torch-free install never imports the torch backend.
        if self.backend_kind is BackendKind.ONNX:
            from app.serve.backend_onnx import OnnxBackend

            return OnnxBackend.load(folder)
        from app.device import resolve_device
        from app.serve.backend_torch import TorchBackend

        return TorchBackend.load(folder, resolve_device(self.device), self.bank_samples, self.bank_seed)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model ``name`` (its highest ready version unless ``version`` names one): ModelNotFound
        (404) or ModelNotReady (503) otherwise."""
        entry = self.lookup(name, version)
        if entry.state is not ModelState.READY:
            raise ModelNotReady(name, entry.reason or entry.state.value)
        return entry

    def lookup(self, name: str, version: str | None = None) -> ServedModel:
        """The entry called ``name`` in whatever state: the named version, else the highest ready one (else the
        model's only entry, loading, failed or unloaded)."""
        with self._lock:
            versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(name)
        if version is not None:
            entry = versions.get(version)
            if entry is None or not entry.version:
                raise ModelNotFound(f"{name}/versions/{version}")
            return entry
        ready = [v for v, m in versions.items() if m.state is ModelState.READY]
        return versions[max(ready, key=version_order)] if ready else next(iter(versions.values()))

    def versions(self, name: str) -> list[ServedModel]:
        """Every entry of ``name``, lowest version first."""
        with self._lock:
            versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(name)
        return [versions[v] for v in sorted(versions, key=version_order)]

    def entries(self) -> list[ServedModel]:
        """Every entry of every model, by name and then version."""
        with self._lock:
            models = dict(self._models)
        return [models[name][v] for name in sorted(models) for v in sorted(models[name], key=version_order)]

    def names(self) -> set[str]:
        with self._lock:
            return set(self._models)

    def last_error(self, name: str) -> str:
        """Why the last reload of ``name`` failed while its previous versions kept serving ("" when it did not)."""
        with self._lock:
            return self._last_error.get(name, "")

    def not_ready(self) -> list[ServedModel]:
        """The entries that keep the server from being ready: loading or failed ones (unloaded ones were not
        asked for)."""
        return [m for m in self.entries() if m.state in (ModelState.LOADING, ModelState.FAILED)]

    @property
    def ready(self) -> bool:
        """Once the start-up pass is done: every model asked for is ready (``ReadyWhen.ALL``), or at least one
        is (``ANY``); never with no model at all."""
        if not self.loaded.is_set():
            return False
        served = [m for m in self.entries() if m.state is not ModelState.UNLOADED]
        if self.ready_when is ReadyWhen.ANY:
            return any(m.state is ModelState.READY for m in served)
        return bool(served) and all(m.state is ModelState.READY for m in served)

    def close(self) -> None:
        """Stop the loader thread (a load in progress finishes; queued ones are dropped)."""
        self.loader.shutdown(wait=True, cancel_futures=True)
