"""The checkpoint manifest: everything a server needs to use a model without guessing.

Validated with pydantic on load; unknown fields are refused so a typo cannot silently change meaning.
See docs/checkpoint-format.md.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from app.bnn.spec import LayerKind, NetworkSpec
from app.data.dataset import DataProvenance
from app.data.preprocess import Preprocessing
from app.data.schema import FeatureSpec
from app.gate.spec import GateSpec, StrictModel

FORMAT_NAME = "sbnn-checkpoint"
FORMAT_VERSION = 2  # 2: the layered gate (app.gate); 1 had a mutual-information threshold only
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TaskType(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"


class TaskInfo(StrictModel):
    type: TaskType
    target: str
    labels: list[str] = Field(min_length=2, description="Class labels; index = class id.")


class WeightsInfo(StrictModel):
    file: str = WEIGHTS_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class TrainingInfo(StrictModel):
    config: dict[str, Any]
    seed: int
    epochs_run: int
    best_epoch: int
    best_val_nll: float
    duration_seconds: float
    device: str
    torch_version: str
    sbnn_version: str


class NoiseInput(StrictModel):
    """One noise input of the sampling graph: (S, *shape) standard normal or U[0, 1) entries."""

    name: str = Field(pattern=r"^noise_\d+_\d+$")
    shape: list[int]
    distribution: Literal["normal", "uniform"]


class OnnxSampling(StrictModel):
    """The sampling graph: x (N, d) and the noise inputs (S leading) -> per-sample probabilities (S, N, C)."""

    file: str = "model-sampling.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)
    inputs: list[NoiseInput] = Field(min_length=1, description="In the order the torch layers draw them.")
    max_abs_diff: float = Field(ge=0.0, description="Largest |onnxruntime − torch| on shared reference noise.")


class OnnxLocal(StrictModel):
    """The local-reparameterisation graph (low-rank kinds): x (N, d) and per-row noise inputs, each
    (S, N, *shape) standard normal, -> per-sample probabilities (S, N, C)."""

    file: str = "model-local.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)
    inputs: list[NoiseInput] = Field(min_length=1, description="In draw order; shapes per row and sample.")
    max_rows: int = Field(
        ge=0, description="The most rows for which sampler 'auto' runs this graph (the torch engine's cost model)."
    )
    max_abs_diff: float = Field(ge=0.0, description="Largest |onnxruntime − torch| on shared reference noise.")


class OnnxInfo(StrictModel):
    """The exported ONNX predictive (``sbnn export-onnx``), validated against torch when it was written.

    ``file`` holds the frozen bank (form a); ``sampling``, when present, the graph that takes noise as input
    (form b) for fresh samples per request, and ``local``, for low-rank kinds, the local-reparameterisation
    graph (form c) that seeded requests on few rows run. Point-estimate kinds (deterministic, ensemble) have
    neither.
    """

    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)
    opset: int = Field(ge=13)
    sampler: Literal["bank"] = "bank"
    samples: int = Field(ge=1)
    bank_seed: int
    tolerance: float = Field(gt=0.0)
    max_abs_diff: float = Field(ge=0.0, description="Largest |onnxruntime − torch| over the reference inputs.")
    onnxruntime_version: str
    sampling: OnnxSampling | None = None
    local: OnnxLocal | None = None


class Manifest(StrictModel):
    format: Literal["sbnn-checkpoint"] = FORMAT_NAME
    format_version: int
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=64)
    created: datetime
    kind: LayerKind
    network: NetworkSpec
    ranks: list[int | None]
    parameter_count: int = Field(ge=1)
    task: TaskInfo
    features: list[FeatureSpec] = Field(min_length=1)
    preprocessing: Preprocessing
    gate: GateSpec
    default_samples: int = Field(ge=1, le=65536)
    training: TrainingInfo
    data: DataProvenance
    metrics: dict[str, Any] = Field(default_factory=dict, description="Written by `sbnn evaluate`.")
    weights: WeightsInfo
    onnx: OnnxInfo | None = Field(None, description="Written by `sbnn export-onnx`.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.kind is not self.network.kind:
            raise ValueError(f"kind '{self.kind.value}' differs from network.kind '{self.network.kind.value}'")
        if self.preprocessing.n_outputs != self.network.in_features:
            produced, expected = self.preprocessing.n_outputs, self.network.in_features
            raise ValueError(f"preprocessing yields {produced} inputs, the network expects {expected}")
        names = {f.name for f in self.features}
        transformed = {t.name for t in self.preprocessing.numeric} | {t.name for t in self.preprocessing.categorical}
        if names != transformed:
            raise ValueError(f"features {sorted(names)} differ from preprocessed columns {sorted(transformed)}")
        if self.gate.density.dimension != self.network.in_features:
            dimension, expected = self.gate.density.dimension, self.network.in_features
            raise ValueError(f"the gate's density has dimension {dimension}, the network expects {expected}")
        classes = 2 if self.network.out_features == 1 else self.network.out_features
        if len(self.task.labels) != classes:
            raise ValueError(f"{len(self.task.labels)} labels for a network with {classes} classes")
        return self
