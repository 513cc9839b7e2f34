"""The layered OOD gate as a checkpoint stores it: the manifest's ``gate`` section (pydantic, no torch).

Four components, each named in a row's reasons:

- ``bounds``: physically possible values (``FeatureSpec.plausible``), and for every numeric feature at most
  ``MAX_STANDARD_SCORE`` training standard deviations from its training mean (beyond that a network's arithmetic
  overflows); a row outside them is **rejected** (no prediction), reason ``bounds:<feature>``.
- ``support``: the training range of each raw numeric value (``FeatureSpec.minimum``/``maximum``, the
  training split's quantiles 0 and 1), a missing value where training had none, an unseen category; such a
  row is **referred**, reason ``support:<feature>``.
- ``density``: the Mahalanobis distance of the preprocessed input from the training rows under a
  Ledoit–Wolf shrinkage covariance; referred above its threshold, reason ``density``.
- ``epistemic``: the mutual information between prediction and weights from the served frozen bank;
  referred above its threshold, reason ``epistemic``.

One false-positive budget (``target_fpr``) covers the union of support, density and epistemic. Each scored
component is ranked against its training-split scores (the reference, in ``gate.safetensors``); a row's
gate level is its largest rank, a support fact ranks above every level, and the threshold on the level is
the conformal (n + 1)-quantile over the calibration split (validation), so the union's false-positive rate on
exchangeable rows is at most the budget. Each component's threshold on its own score follows from that level.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

GATE_FILE = "gate.safetensors"
REFERENCE_LEVELS = 101  # percentiles 0, 1, …, 100 of each score on the calibration split


class Component(str, Enum):
    """The gate's components, in the order a row's reasons list them."""

    BOUNDS = "bounds"
    SUPPORT = "support"
    DENSITY = "density"
    EPISTEMIC = "epistemic"


SCORED = (Component.DENSITY, Component.EPISTEMIC)  # the components ranked against the training reference


class StrictModel(BaseModel):
    """Frozen, and unknown fields refused: the manifest's sections and the gate's."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Percentiles(StrictModel):
    reference_quantiles: list[float] = Field(
        min_length=REFERENCE_LEVELS,
        max_length=REFERENCE_LEVELS,
        description="Percentiles 0, 1, …, 100 of the score on the calibration split (answers' percentiles, drift).",
    )

    @model_validator(mode="after")
    def _sorted(self) -> _Percentiles:
        q = self.reference_quantiles
        if any(b < a for a, b in zip(q[:-1], q[1:], strict=True)):
            raise ValueError("reference_quantiles must be non-decreasing")
        return self


class SupportComponent(_Percentiles):
    """Outside the training range (each numeric feature's training minimum and maximum, ``FeatureSpec``), in
    training standard deviations (0 inside); a support fact refers whatever the score."""

    score: Literal["training_range_excess_sd", "text_excess"] = Field(
        "training_range_excess_sd",
        description="Tables and sequences: standard deviations beyond the training range; texts: the excess of "
        "the OOV rate and of the length over the training texts' (app.gate.text).",
    )


class ScoredComponent(_Percentiles):
    """A component with a threshold on its score: the row is referred when ``score > threshold``."""

    threshold: float | None = Field(description="null: this component refers no row (too few calibration rows).")


def omit_defaults(
    data: dict[str, Any], keys: tuple[str, ...], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``data`` without ``keys`` whose value is None (or the default given for them): fields added later are
    left out where they hold their default, so older checkpoints serialise unchanged."""
    defaults = defaults or {}
    for key in keys:
        if key in data and data[key] == defaults.get(key):
            data.pop(key)
    return data


class DensityComponent(ScoredComponent):
    score: Literal["mahalanobis"] = "mahalanobis"
    covariance: Literal["ledoit-wolf"] = "ledoit-wolf"
    shrinkage: float = Field(ge=0.0, le=1.0, description="Ledoit–Wolf shrinkage towards a scaled identity.")
    dimension: int = Field(ge=1, description="The density's input width: d, or 2d for a sequence's summary.")
    input: Literal["row", "sequence_mean_and_last_step", "text_encoder_mean"] = Field(
        "row",
        description="What the distance is measured on: the preprocessed row (d); for a sequence the mean of "
        "its preprocessed steps and its last step side by side (2d); for a text the encoder's state before its "
        "last block under the posterior mean, averaged over the text's positions (d_model).",
    )

    @model_serializer(mode="wrap")
    def _omit_row_input(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A table's gate stays byte-identical to one written before sequence summaries existed.
        return omit_defaults(handler(self), ("input",), {"input": "row"})


class EpistemicComponent(ScoredComponent):
    score: Literal["mutual_information", "epistemic_variance"] = Field(
        "mutual_information",
        description="Classification: the mutual information (nats); regression: the variance of the samples' "
        "means, in the target's unit squared.",
    )


class GateCalibration(StrictModel):
    """How the thresholds were set, and on which Monte Carlo draws (the server's default bank)."""

    method: Literal["conformal-max-rank"] = "conformal-max-rank"
    split: str = "val"
    rows: int = Field(ge=1)
    reference_split: str = "train"
    reference_rows: int = Field(ge=1)
    level: int | None = Field(
        ge=0, description="Largest rank (of reference_rows) a row may reach and be accepted; null: no finite level."
    )
    sampler: Literal["bank"] = "bank"
    samples: int = Field(ge=1)
    bank_seed: int = Field(ge=0)


class GateRates(StrictModel):
    """Shares of one in-distribution split that the gate does not accept (its false positives), and the share
    each component refers."""

    rows: int = Field(ge=1)
    not_accepted: float = Field(ge=0.0, le=1.0, description="Referred or rejected: the gate's false-positive rate.")
    rejected: float = Field(ge=0.0, le=1.0)
    support: float = Field(ge=0.0, le=1.0)
    density: float = Field(ge=0.0, le=1.0)
    epistemic: float = Field(ge=0.0, le=1.0)


class GateFile(StrictModel):
    """The gate's tensors: the density's mean and precision, and each scored component's sorted reference."""

    file: str = GATE_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class GateSpec(StrictModel):
    """The manifest's ``gate`` section."""

    target_fpr: float = Field(gt=0.0, lt=1.0, description="The union's false-positive budget.")
    support: SupportComponent
    density: DensityComponent
    epistemic: EpistemicComponent
    calibration: GateCalibration
    achieved: dict[str, GateRates] = Field(description="Rates on the calibration split ('val') and on 'test'.")
    warnings: list[str] = Field(default_factory=list, description="What training found the gate misses.")
    tensors: GateFile

    @model_validator(mode="after")
    def _calibrated(self) -> GateSpec:
        if self.calibration.split not in self.achieved:
            raise ValueError(f"achieved rates lack the calibration split '{self.calibration.split}'")
        return self

    def thresholds(self) -> dict[Component, float | None]:
        """Each scored component's threshold (None: it refers nothing)."""
        return {Component.DENSITY: self.density.threshold, Component.EPISTEMIC: self.epistemic.threshold}
