"""Save and load checkpoints: safetensors weights + a validated manifest, hash checked before parsing.

Nothing here unpickles: a folder holding pickle-style weights is refused with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.bnn.network import BayesianMLP
from app.bnn.recurrent import BayesianLSTM
from app.bnn.spec import SequenceNetworkSpec, TextNetworkSpec
from app.bnn.transformer import BayesianTransformer
from app.checkpoint.files import (  # noqa: F401 - re-exported for callers of the torch side
    atomic_write,
    read_gate,
    read_manifest,
    read_onnx,
    read_tokenizer,
    sha256_bytes,
    verified_weights_bytes,
    write_manifest,
)
from app.checkpoint.manifest import FORMAT_NAME, WEIGHTS_FILE, Manifest
from app.errors import CheckpointError
from app.gate.gate import Gate, GateTensors

if TYPE_CHECKING:
    from app.data.tokenizer import TextEncoder

Network = BayesianMLP | BayesianLSTM | BayesianTransformer


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its folder, manifest, the rebuilt network (eval mode), its gate, and for a text
    network its tokenizer."""

    path: Path
    manifest: Manifest
    model: Network  # an LSTM exactly when the manifest has a sequence section, a Transformer a text section
    gate: Gate
    encoder: TextEncoder | None = None


def build_network(manifest: Manifest, device: str | torch.device) -> Network:
    """The manifest's network, uninitialised on ``device`` ("meta": shapes only)."""
    if isinstance(manifest.network, SequenceNetworkSpec):
        return BayesianLSTM(manifest.network, device=device)
    if isinstance(manifest.network, TextNetworkSpec):
        return BayesianTransformer(manifest.network, device=device)
    return BayesianMLP(manifest.network, device=device)


def weights_bytes(model: Network) -> bytes:
    """The network's state as safetensors bytes (CPU, contiguous)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state, metadata={"format": FORMAT_NAME})


def save_checkpoint(
    folder: str | Path, model: Network, manifest: Manifest, gate: GateTensors, tokenizer_json: str | None = None
) -> Manifest:
    """Write ``weights.safetensors``, ``gate.safetensors`` (and a text network's ``tokenizer.json``) and
    ``manifest.json`` into ``folder``; returns the manifest with each file's sha256 and size filled in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data, gate_data = weights_bytes(model), gate.to_bytes()
    spec = manifest.gate
    if (tokenizer_json is None) != (manifest.text is None):
        raise ValueError("a text network's checkpoint needs its tokenizer, and only a text network has one")
    updates = {}
    if manifest.text is not None and tokenizer_json is not None:
        tokenizer_data = tokenizer_json.encode("utf-8")
        record = manifest.text.tokenizer.model_copy(
            update={"sha256": sha256_bytes(tokenizer_data), "bytes": len(tokenizer_data)}
        )
        updates["text"] = manifest.text.model_copy(update={"tokenizer": record})
    manifest = manifest.model_copy(
        update={
            **updates,
            "weights": manifest.weights.model_copy(update={"sha256": sha256_bytes(data), "bytes": len(data)}),
            "gate": spec.model_copy(
                update={
                    "tensors": spec.tensors.model_copy(
                        update={"sha256": sha256_bytes(gate_data), "bytes": len(gate_data)}
                    )
                }
            ),
        }
    )
    Manifest.model_validate(manifest.model_dump())  # re-validate the updated copy
    atomic_write(folder / WEIGHTS_FILE, data)
    atomic_write(folder / spec.tensors.file, gate_data)
    if manifest.text is not None and tokenizer_json is not None:
        atomic_write(folder / manifest.text.tokenizer.file, tokenizer_json.encode("utf-8"))
    write_manifest(folder, manifest)
    return manifest


def _read_weights(folder: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    data = verified_weights_bytes(folder, manifest)
    path = folder / manifest.weights.file
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(str(path), f"not a readable safetensors file ({exc})") from exc


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Verify and load a checkpoint folder; raises :class:`CheckpointError` naming the file and problem."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    tensors = _read_weights(folder, manifest)
    path = folder / manifest.weights.file
    model = build_network(manifest, device="meta")
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    if missing := sorted(expected.keys() - found.keys()):
        raise CheckpointError(str(path), f"missing tensors for the manifest's network: {missing[:5]}")
    if unexpected := sorted(found.keys() - expected.keys()):
        raise CheckpointError(str(path), f"tensors the manifest's network does not have: {unexpected[:5]}")
    for key, want in expected.items():
        if found[key] != want:
            raise CheckpointError(str(path), f"tensor '{key}' is {found[key]}, the network needs {want}")
        if not torch.isfinite(tensors[key]).all():
            raise CheckpointError(str(path), f"tensor '{key}' holds NaN or infinite values")
    # Allocate without initialising (no RNG use), then fill from the verified tensors.
    gate = read_gate(folder, manifest)
    model = model.to_empty(device=device)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    encoder = read_tokenizer(folder, manifest) if manifest.text is not None else None
    return Checkpoint(path=folder, manifest=manifest, model=model, gate=gate, encoder=encoder)
