"""The feature schema a model was trained on: names, kinds, training ranges and categories.

Stored in the checkpoint and used by the server to validate records, so this module needs only pydantic
(no pandas).
"""

from __future__ import annotations

import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, model_validator

from app.errors import SchemaError


class FeatureError(SchemaError):
    """One value of a record does not fit its feature's schema: located by (``feature``, ``row``), so that a
    protocol can name the field as its client wrote it (``instances[3].creatinine``, ``inputs.creatinine[3]``)."""

    def __init__(self, feature: str, row: int, reason: str) -> None:
        super().__init__(f"{feature}[{row}]", reason)
        self.feature = feature
        self.row = row


class FeatureKind(str, Enum):
    """How a raw feature is encoded: standardised number or one-hot category."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


def format_range(low: float | None, high: float | None) -> str:
    """``[low, high]``, an open side written as -inf or inf."""
    return f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"


class PlausibleRange(BaseModel):
    """Physically possible values of a numeric feature, inclusive; None leaves that side open.

    Not learned from data: it comes from the data set's definitions (the bundled flchain cohort) or from the
    user (``sbnn train --bounds age=0:120``). A row outside it is rejected by the gate, never scored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PlausibleRange:
        for value in (self.low, self.high):
            if value is not None and not math.isfinite(value):
                raise ValueError("plausible bounds must be finite numbers (leave a side open with null)")
        if self.low is None and self.high is None:
            raise ValueError("a plausible range needs a low or a high bound")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"plausible low {self.low} exceeds high {self.high}")
        return self

    def __str__(self) -> str:
        return format_range(self.low, self.high)


class FeatureSpec(BaseModel):
    """One raw input feature as seen in the training split.

    `categories` (categorical only) lists the training categories in encoding order; `minimum`/`maximum`
    (numeric only) are the observed, non-missing training range (the gate's support); `missing_allowed` is
    True when the training data had missing values (a number is imputed, a category gets its own missing
    level); `plausible` (numeric only) bounds the physically possible values (the gate rejects a row outside
    it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: FeatureKind
    categories: list[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    missing_allowed: bool = False
    plausible: PlausibleRange | None = None
    unit: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> FeatureSpec:
        if not self.name:
            raise ValueError("feature name must not be empty")
        if self.kind is FeatureKind.CATEGORICAL:
            if not self.categories:
                raise ValueError(f"{self.name}: a categorical feature needs a non-empty list of categories")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"{self.name}: categories must be unique")
            if self.minimum is not None or self.maximum is not None or self.plausible is not None:
                raise ValueError(f"{self.name}: a categorical feature has no minimum/maximum or plausible range")
        else:
            if self.categories is not None:
                raise ValueError(f"{self.name}: a numeric feature has no categories")
            if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
                raise ValueError(f"{self.name}: minimum {self.minimum} exceeds maximum {self.maximum}")
        return self
