"""Checkpoint files without torch: the manifest, hashes, atomic writes, verified bytes of weights and ONNX.

The torch side (building the network from verified tensors) is in ``app.checkpoint.io``; an ONNX-serving
process needs only this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from app.checkpoint.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, Manifest, OnnxInfo, OnnxSampling
from app.errors import CheckpointError

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared read-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write(folder / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and validate ``manifest.json`` (format name and version first, for a clear refusal)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise CheckpointError(str(folder), "not a checkpoint folder (no such directory)")
    if not path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                str(folder / pickles[0]),
                "pickle-style weights are refused (loading them can execute code); "
                "re-save as safetensors with a manifest.json",
            )
        raise CheckpointError(str(path), "missing manifest.json")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise CheckpointError(str(path), f"manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(str(path), f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise CheckpointError(str(path), f"not an {FORMAT_NAME} manifest (field 'format')")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            str(path),
            f"unsupported format_version {raw.get('format_version')!r}; this sbnn reads version {FORMAT_VERSION}",
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        reason = f"invalid field '{where}': {first['msg']} ({exc.error_count()} error(s))"
        raise CheckpointError(str(path), reason) from exc


def verified_weights_bytes(folder: Path, manifest: Manifest) -> bytes:
    """The weights file's bytes, after its name, size and sha256 were checked against the manifest."""
    name = manifest.weights.file
    if Path(name).name != name or name in {"", ".", ".."}:
        raise CheckpointError(str(folder / MANIFEST_FILE), f"weights.file must be a plain file name, got {name!r}")
    path = folder / name
    if path.suffix in PICKLE_SUFFIXES or path.suffix != ".safetensors":
        raise CheckpointError(
            str(path), "only safetensors weights are accepted; pickle-style formats are refused (they can run code)"
        )
    if not path.is_file():
        raise CheckpointError(str(path), "weights file is missing")
    data = path.read_bytes()  # hash and parse the very same bytes
    if len(data) != manifest.weights.bytes:
        raise CheckpointError(
            str(path), f"size {len(data)} bytes differs from the manifest's {manifest.weights.bytes} (truncated?)"
        )
    digest = sha256_bytes(data)
    if digest != manifest.weights.sha256:
        raise CheckpointError(
            str(path), f"sha256 {digest[:12]}… differs from the manifest's {manifest.weights.sha256[:12]}… (modified)"
        )
    return data


def read_onnx(folder: str | Path, manifest: Manifest, graph: Literal["bank", "sampling"] = "bank") -> bytes:
    """The verified bytes of one of the checkpoint's exported ONNX graphs (size and sha256 against the
    manifest): the frozen bank's, or the sampling graph's."""
    folder = Path(folder)
    if manifest.onnx is None:
        raise CheckpointError(str(folder / MANIFEST_FILE), "no ONNX export recorded (run `sbnn export-onnx`)")
    record: OnnxInfo | OnnxSampling | None = manifest.onnx if graph == "bank" else manifest.onnx.sampling
    if record is None:
        raise CheckpointError(str(folder / MANIFEST_FILE), f"no ONNX {graph} graph recorded for this model")
    name, where = record.file, "onnx.file" if graph == "bank" else "onnx.sampling.file"
    if Path(name).name != name or not name.endswith(".onnx"):
        raise CheckpointError(str(folder / MANIFEST_FILE), f"{where} must be a plain .onnx file name, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(str(path), "ONNX file is missing")
    data = path.read_bytes()
    if len(data) != record.bytes or sha256_bytes(data) != record.sha256:
        raise CheckpointError(str(path), f"size or sha256 differs from the manifest's {where} record (modified)")
    return data
