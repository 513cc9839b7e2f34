"""The checkpoint manifest: everything a server needs to use a model without guessing.

Validated with pydantic on load; unknown fields are refused so a typo cannot silently change meaning.
See docs/checkpoint-format.md.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, SerializerFunctionWrapHandler, Tag, model_serializer, model_validator

from app.bnn.spec import LayerKind, Likelihood, NetworkSpec, SequenceNetworkSpec, TextNetworkSpec
from app.data.dataset import DataProvenance
from app.data.preprocess import Preprocessing
from app.data.schema import FeatureSpec
from app.gate.spec import GateSpec, StrictModel, omit_defaults
from app.gate.text import TextSupport

FORMAT_NAME = "sbnn-checkpoint"
FORMAT_VERSION = 2  # 2: the layered gate (app.gate); 1 had a mutual-information threshold only
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TaskType(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"  # a continuous target, a heteroscedastic Gaussian head


class TargetScale(StrictModel):
    """The network predicts (y − mean) / std; every answer is mapped back to the target's own unit."""

    mean: float
    std: float = Field(gt=0.0)


class TaskInfo(StrictModel):
    type: TaskType
    target: str
    labels: list[str] | None = Field(None, min_length=2, description="Class ids index them; null: regression.")
    unit: str | None = Field(None, description="Regression: the unit the target is predicted in.")
    scale: TargetScale | None = Field(None, description="Regression: the standardisation the network was trained on.")

    @model_serializer(mode="wrap")
    def _omit_regression_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A classifier's manifest stays byte-identical to one written before regressions existed.
        return omit_defaults(handler(self), ("unit", "scale"))

    @model_validator(mode="after")
    def _labels_or_scale(self) -> TaskInfo:
        if self.type is TaskType.REGRESSION and (self.labels is not None or self.scale is None):
            raise ValueError("a regression task has a scale and no labels")
        if self.type is not TaskType.REGRESSION and (self.labels is None or self.scale is not None):
            raise ValueError(f"a {self.type.value} task has labels and no scale")
        return self


class SequenceSchema(StrictModel):
    """How a request's time steps become the network's input: each step is a row of ``features``, checked and
    preprocessed as a flat row is; the steps of one sequence are sent oldest first."""

    max_length: int = Field(ge=1, description="Steps the network sees; a longer sequence keeps its last ones.")
    padding: Literal["right"] = Field("right", description="Shorter sequences are zero-padded after their end.")
    masking: Literal["lengths"] = Field("lengths", description="The state past a sequence's length is held.")
    truncation: Literal["keep_last"] = "keep_last"
    resampling: Literal["none"] = Field("none", description="Steps are used as sent: no resampling in time.")
    time: str | None = Field(None, description="The column the training steps were ordered by, if any.")


TOKENIZER_FILE = "tokenizer.json"


class TokenizerFile(StrictModel):
    """The tokenizer's JSON (Hugging Face ``tokenizers``), verified like the weights before it is parsed."""

    file: str = TOKENIZER_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class TextSchema(StrictModel):
    """How a request's text becomes the network's input: the tokenizer (lower-casing WordPiece, [CLS] first),
    the first ``max_length`` tokens kept, right-padded; and the request limits beyond which a text is a 4xx
    error rather than an answer."""

    field: str = Field("text", pattern=r"^[a-z][a-z0-9_]{0,31}$", description="The instance field / input name.")
    tokenizer: TokenizerFile
    vocab_size: int = Field(ge=4)
    max_length: int = Field(ge=2, description="Tokens the network reads, [CLS] included.")
    truncation: Literal["keep_first"] = "keep_first"
    padding: Literal["right"] = "right"
    max_bytes: int = Field(ge=1, description="The longest text a request may send, in UTF-8 bytes.")
    max_tokens: int = Field(ge=2, description="The most tokens a request's text may hold before the cut.")
    support: TextSupport


def _architecture(value: Any) -> str:
    """The network's architecture tag: manifests from before sequence networks name none (an MLP)."""
    found = value.get("architecture") if isinstance(value, dict) else getattr(value, "architecture", None)
    return found if found in ("lstm", "transformer") else "mlp"


AnyNetworkSpec = Annotated[
    Annotated[NetworkSpec, Tag("mlp")]
    | Annotated[SequenceNetworkSpec, Tag("lstm")]
    | Annotated[TextNetworkSpec, Tag("transformer")],
    Discriminator(_architecture),
]


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
    network: AnyNetworkSpec
    sequence: SequenceSchema | None = Field(None, description="Sequence networks: how steps become the input.")
    text: TextSchema | None = Field(None, description="Text networks: how a text becomes the input.")
    ranks: list[int | None]
    parameter_count: int = Field(ge=1)
    task: TaskInfo
    features: list[FeatureSpec] = Field(description="Empty for a text network (its input is the text).")
    preprocessing: Preprocessing | None = Field(None, description="Null for a text network.")
    gate: GateSpec
    default_samples: int = Field(ge=1, le=65536)
    training: TrainingInfo
    data: DataProvenance
    metrics: dict[str, Any] = Field(default_factory=dict, description="Written by `sbnn evaluate`.")
    weights: WeightsInfo
    onnx: OnnxInfo | None = Field(None, description="Written by `sbnn export-onnx`.")

    @model_serializer(mode="wrap")
    def _omit_no_sequence(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An MLP's manifest stays byte-identical to one written before sequence and text networks existed.
        return omit_defaults(handler(self), ("sequence", "text", "preprocessing"))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.kind is not self.network.kind:
            raise ValueError(f"kind '{self.kind.value}' differs from network.kind '{self.network.kind.value}'")
        if isinstance(self.network, TextNetworkSpec) or self.text is not None:
            return self._consistent_text()
        if self.preprocessing is None or not self.features:
            raise ValueError("a table or sequence network needs its features and preprocessing")
        if self.preprocessing.n_outputs != self.network.in_features:
            produced, expected = self.preprocessing.n_outputs, self.network.in_features
            raise ValueError(f"preprocessing yields {produced} inputs, the network expects {expected}")
        names = {f.name for f in self.features}
        transformed = {t.name for t in self.preprocessing.numeric} | {t.name for t in self.preprocessing.categorical}
        if names != transformed:
            raise ValueError(f"features {sorted(names)} differ from preprocessed columns {sorted(transformed)}")
        recurrent = isinstance(self.network, SequenceNetworkSpec)
        if recurrent != (self.sequence is not None):
            raise ValueError("a sequence network needs the sequence section, and only a sequence network has one")
        density = self.gate.density
        expected = 2 * self.network.in_features if recurrent else self.network.in_features
        if density.dimension != expected or (density.input == "row") == recurrent:
            raise ValueError(
                f"the gate's density measures {density.input} of dimension {density.dimension}; the network "
                f"needs {'sequence_mean_and_last_step' if recurrent else 'row'} of dimension {expected}"
            )
        regression = self.task.type is TaskType.REGRESSION
        if regression != (self.network.likelihood is Likelihood.GAUSSIAN):
            raise ValueError(f"a {self.task.type.value} task with a {self.network.likelihood.value} likelihood")
        score = "epistemic_variance" if regression else "mutual_information"
        if self.gate.epistemic.score != score:
            raise ValueError(f"the gate's epistemic score is {self.gate.epistemic.score}, the task needs {score}")
        if regression:
            if self.network.out_features != 1:
                raise ValueError("a regression predicts one target")
            return self
        classes = 2 if self.network.out_features == 1 else self.network.out_features
        if len(self.task.labels or []) != classes:
            raise ValueError(f"{len(self.task.labels or [])} labels for a network with {classes} classes")
        return self

    def _consistent_text(self) -> Manifest:
        network, text = self.network, self.text
        if not isinstance(network, TextNetworkSpec) or text is None:
            raise ValueError("a text network needs the text section, and only a text network has one")
        if self.features or self.preprocessing is not None or self.sequence is not None:
            raise ValueError("a text network has no features, preprocessing or sequence section")
        if (text.vocab_size, text.max_length) != (network.vocab_size, network.max_length):
            raise ValueError(
                f"the tokenizer gives {text.vocab_size} ids and {text.max_length} tokens; the network takes "
                f"{network.vocab_size} and {network.max_length}"
            )
        density = self.gate.density
        if density.input != "text_encoder_mean" or density.dimension != network.d_model:
            raise ValueError(
                f"the gate's density measures {density.input} of dimension {density.dimension}; a text network "
                f"needs text_encoder_mean of dimension {network.d_model}"
            )
        if self.task.type is TaskType.REGRESSION or self.gate.epistemic.score != "mutual_information":
            raise ValueError("a text network is a classifier scored by its mutual information")
        classes = 2 if network.out_features == 1 else network.out_features
        if len(self.task.labels or []) != classes:
            raise ValueError(f"{len(self.task.labels or [])} labels for a network with {classes} classes")
        return self
