"""The onnxruntime backend: the exported frozen-bank graph (``sbnn export-onnx``), without torch.

It serves the bank only: ``samples`` must be the export's S (or omitted), ``seed`` omitted or the bank's,
no other sampler and no adaptive tolerance. Answers match the torch backend's ``bank`` sampler for the same
bank seed (validated on export).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from app.bnn.spec import MonteCarloError, Sampler
from app.checkpoint.files import read_manifest, read_onnx, verified_weights_bytes
from app.checkpoint.manifest import Manifest
from app.errors import CheckpointError
from app.serve.backend import BackendKind, InferenceOptions, Scores

OUTPUTS = ["probabilities", "total_entropy", "aleatoric", "mutual_information", "predictive_std"]


class OnnxBackend:
    kind = BackendKind.ONNX

    def __init__(self, manifest: Manifest, session: object) -> None:
        self.manifest = manifest
        self.session = session
        self.onnx = manifest.onnx
        assert self.onnx is not None  # checked by load

    @classmethod
    def load(cls, folder: Path) -> OnnxBackend:
        """Verify the manifest, the weights' and the graph's hashes; open an onnxruntime session; warm it."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CheckpointError(str(folder), "the onnx backend needs onnxruntime: pip install 'sbnn[onnx]'") from exc
        manifest = read_manifest(folder)
        verified_weights_bytes(Path(folder), manifest)  # the export belongs to these very weights
        if manifest.onnx is None:
            raise CheckpointError(str(folder / "manifest.json"), "no ONNX export (run `sbnn export-onnx` first)")
        options = ort.SessionOptions()
        session = ort.InferenceSession(read_onnx(folder, manifest), options, providers=["CPUExecutionProvider"])
        backend = cls(manifest, session)
        x = manifest.preprocessing.typical_input()
        (scores,) = backend.compute([(x, InferenceOptions(samples=backend.onnx.samples))], batch_seed=0)
        if not np.isfinite(scores.probs).all():
            raise CheckpointError(str(folder), "warm-up prediction is not finite")
        return backend

    def num_samples(self, samples: int) -> int:
        return self.onnx.samples

    def refuse(
        self, sampler: Sampler, samples: int, seed: int | None, tolerance: float | None
    ) -> tuple[str, str] | None:
        if sampler not in (Sampler.AUTO, Sampler.BANK):
            return "sampler", f"the onnx backend serves the frozen bank only, not '{sampler.value}'"
        if samples != self.onnx.samples:
            return "samples", f"the ONNX export holds {self.onnx.samples} samples; {samples} asked"
        if seed not in (None, self.onnx.bank_seed):
            return "seed", f"the ONNX export's bank was drawn with seed {self.onnx.bank_seed}; omit it or send that one"
        if tolerance is not None:
            return "tolerance", "adaptive sample counts need the torch backend"
        return None

    def compute(self, jobs: list[tuple[np.ndarray, InferenceOptions]], batch_seed: int) -> list[Scores]:
        results = []
        samples = self.onnx.samples
        for x, _ in jobs:
            probs, total, aleatoric, mi, std = self.session.run(OUTPUTS, {"x": x})  # type: ignore[attr-defined]
            results.append(Scores(
                probs=probs.astype(np.float64), total=total, aleatoric=aleatoric, epistemic=mi, std=std,
                samples=samples, seed=self.onnx.bank_seed, sampler=Sampler.BANK,
                # The graph returns summaries only: the probability's error follows from the std; the MI's needs
                # the per-sample probabilities, which the graph does not return.
                mc_error=MonteCarloError(float(std.max()) / math.sqrt(samples), float("nan")),
            ))
        return results
