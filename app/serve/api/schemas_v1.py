"""Wire schemas of the /v1 REST API, named by direction."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.bnn.spec import Sampler
from app.data.schema import FeatureSpec
from app.gate.spec import GateCalibration, GateRates

FeatureValue = str | int | float | bool | None
Record = dict[str, FeatureValue]
# Which form an instance takes is decided by its JSON type, so only that form's errors are reported; the tag
# pydantic puts in an error's loc (instances.0.record.age) is taken out again (``instance_loc``).
INSTANCE_TAGS = ("record", "steps", "text")


def _instance_form(value: Any) -> str | None:
    """A list holding a record (or none: empty) is steps; a list of bare values is a positional row, refused; a
    string is a text model's text."""
    if isinstance(value, dict):
        return "record"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value)):
        return "steps"
    return None


Instance = Annotated[
    Annotated[Record, Tag("record")] | Annotated[list[Record], Tag("steps")] | Annotated[str, Tag("text")],
    Discriminator(
        _instance_form,
        custom_error_type="instance_type",
        custom_error_message="an instance is a feature record (not a positional row), for a sequence model a "
        'list of step records, for a text model a string or {"text": "..."}',
    ),
]


def instance_loc(loc: tuple[str | int, ...]) -> list[str | int]:
    """An error's loc without the instance form's tag: ("body", "instances", 0, "record", "age") -> […, 0, "age"]."""
    parts = list(loc)
    tagged = len(parts) > 3 and isinstance(parts[2], int) and parts[3] in INSTANCE_TAGS
    if parts[:2] == ["body", "instances"] and tagged:
        del parts[3]
    return parts


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Wire):
    instances: list[Instance] = Field(
        min_length=1,
        description="Feature records, one per row, keyed by the model's feature names (see GET /v1/models/{name}); "
        "for a sequence model, one list of time steps per instance, oldest first, each step a feature record "
        "(at least one step; beyond the model's max_length the last steps are kept, and every step is screened); "
        'for a text model, {"text": "..."} or the bare string per instance (its first max_length tokens are read).',
        examples=[[{"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}]],
    )
    # Strict, as /v2's parameters are: no "512" for 512, no true for 1, no 8.0 for 8.
    samples: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Monte Carlo weight samples (default: the model's); the cap when `tolerance` is set.",
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, strict=True, description="Seed of the weight samples; omit for a fresh one."
    )
    sampler: Sampler | None = Field(
        None,
        description="bank (frozen samples), fresh (drawn per request), local (local reparameterisation) or "
        "auto (the cost model); default: the server's.",
    )
    tolerance: float | None = Field(
        None,
        strict=True,
        gt=0.0,
        lt=1.0,
        description="Adaptive: draw 64 samples at a time until the Monte Carlo standard "
        "errors of the probability and of the mutual information are at most this (or `samples` are used).",
    )
    timeout_s: float | None = Field(
        None,
        strict=True,
        gt=0.0,
        description="This request's deadline in seconds (a 504 past it); the server's (SBNN_REQUEST_TIMEOUT_S) "
        "applies when it is shorter.",
    )


class UncertaintyOut(_Wire):
    total: float = Field(description="Entropy of the predictive mean, nats.")
    aleatoric: float = Field(description="Expected entropy over weight samples, nats.")
    epistemic: float = Field(description="Mutual information between prediction and weights, nats.")
    std: float = Field(description="Std over weight samples of the predicted class's probability.")


class ComponentOut(_Wire):
    score: float | None = Field(description="The component's score; null where the row was not scored (rejected).")
    threshold: float | None = Field(description="Referred above this score; null: this component refers no row.")
    percentile: float | None = Field(description="Percent of in-distribution validation rows scoring below this one.")
    flag: bool = Field(description="True when this component refers the row.")


class SupportOut(_Wire):
    score: float | None = Field(
        description="Distance beyond the training range of a numeric feature, in training "
        "SDs (0 inside); null where the row was not scored (rejected)."
    )
    percentile: float | None = Field(description="Percent of in-distribution validation rows scoring below this one.")
    flag: bool = Field(description="True when a value lies outside the training support (range, missing, category).")


class GateOut(_Wire):
    support: SupportOut
    density: ComponentOut = Field(description="Mahalanobis distance of the preprocessed input from the training rows.")
    epistemic: ComponentOut = Field(description="Mutual information between prediction and weights, nats.")


class PredictionOut(_Wire):
    label: str | None = Field(description="The most probable class; null for a rejected row.")
    probabilities: dict[str, float] | None = Field(
        description="Posterior predictive mean per class label; null for a rejected row."
    )
    uncertainty: UncertaintyOut | None = Field(description="null for a rejected row.")
    gate: GateOut
    decision: Literal["accept", "refer", "reject"] = Field(
        description="reject: a value is physically impossible (no prediction); refer: the row is unlike the "
        "training data (a human should look); accept otherwise."
    )
    reasons: list[str] = Field(
        description="Why the row was referred or rejected: bounds:<feature>, support:<feature>, density, epistemic."
    )
    details: list[str] = Field(description="One sentence per reason, with the value and the bound or threshold.")


class VarianceOut(_Wire):
    total: float = Field(description="Predictive variance, aleatoric + epistemic, in the target's unit squared.")
    aleatoric: float = Field(description="Mean over weight samples of the predicted noise variance.")
    epistemic: float = Field(description="Variance over weight samples of the predicted mean (the gate's score).")


class RegressionPredictionOut(_Wire):
    """A regression's answer for one row (or sequence): the Gaussian mixture over weight samples, in the
    target's unit, and the gate's answer as for a classifier."""

    mean: float | None = Field(description="Predictive mean, in ``unit``; null for a rejected row.")
    unit: str | None = Field(description="The target's unit (the manifest's task.unit).")
    intervals: dict[str, list[float]] | None = Field(
        description='Central predictive intervals [low, high] by level ("0.5", "0.9", "0.95"), from the '
        "mixture's quantiles; null for a rejected row."
    )
    variance: VarianceOut | None = Field(description="null for a rejected row.")
    gate: GateOut
    decision: Literal["accept", "refer", "reject"]
    reasons: list[str]
    details: list[str]


class RegressionMonteCarloErrorOut(_Wire):
    mean: float = Field(description="Largest standard error over rows of the predictive mean, sqrt(epistemic / S).")


class ModelRef(_Wire):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the model's weights file.")
    kind: str


class MonteCarloErrorOut(_Wire):
    probability: float = Field(description="Largest standard error over rows of the predicted class's probability.")
    mutual_information: float | None = Field(
        description="Largest standard error over rows of the mutual information (a delete-one-group jackknife; "
        "null where the backend has only summaries, as the onnx bank graph)."
    )


class PredictResponse(_Wire):
    model: ModelRef
    samples: int = Field(description="Weight samples used (asked, when no row was scored).")
    seed: int | None = Field(
        description="Seed used: send it back with the same rows, samples and sampler to replay; "
        "null when the gate rejected every row (nothing was drawn)."
    )
    sampler: Sampler | None = Field(
        description="The sampler that ran (bank, fresh or local); null when no row was scored."
    )
    mc_error: MonteCarloErrorOut | RegressionMonteCarloErrorOut | None = Field(
        description="null when no row was scored."
    )
    predictions: list[PredictionOut | RegressionPredictionOut]


class KServePredictResponse(_Wire):
    """The KServe V1 answer of ``POST /v1/models/{name}:predict``: one prediction object per instance, the same
    object as ``PredictResponse.predictions`` (the top-level model, samples, seed and Monte Carlo errors are on
    the canonical ``/predict`` route only)."""

    predictions: list[PredictionOut | RegressionPredictionOut]


class GateThresholdsOut(_Wire):
    density: float | None
    epistemic: float | None


class GateSummaryOut(_Wire):
    target_fpr: float = Field(description="The false-positive budget of the union of support, density, epistemic.")
    thresholds: GateThresholdsOut
    calibration: GateCalibration
    achieved: dict[str, GateRates] = Field(description="Shares not accepted on the validation and test splits.")
    warnings: list[str]


class ModelSummaryOut(_Wire):
    name: str
    state: Literal["loading", "ready", "failed", "unloaded"]
    ready: bool = Field(description="True when the model serves (state ready): KServe V1's model readiness.")
    reason: str | None = None
    version: str | None = None
    kind: str | None = None


class ModelListResponse(_Wire):
    models: list[ModelSummaryOut]


class ModelMetadataResponse(ModelSummaryOut):
    sha256: str | None = None
    ranks: list[int | None] | None = None
    parameter_count: int | None = None
    task: dict[str, Any] | None = None
    features: list[FeatureSpec] | None = None
    gate: GateSummaryOut | None = None
    default_samples: int | None = None
    max_samples: int | None = None
    metrics: dict[str, Any] | None = None
    sequence: dict[str, Any] | None = Field(
        None, description="A sequence model's schema (max_length, padding, truncation): its instances are steps."
    )
    text: dict[str, Any] | None = Field(
        None,
        description="A text model's input: the instance field, the tokens read per text (max_length) and the "
        "limits past which a text is refused (max_bytes of UTF-8, max_tokens), the tokenizer's vocab_size.",
    )


class ErrorDetail(_Wire):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(_Wire):
    detail: str | list[ErrorDetail]


class LiveResponse(_Wire):
    status: Literal["alive"] = Field(description="KServe V1 server liveness (what the SDK's is_server_live reads).")
