"""The feature schema a model was trained on: names, kinds, training ranges and categories.

Stored in the checkpoint and used by the server to validate records, so this module needs only pydantic
(no pandas).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, model_validator


class FeatureKind(str, Enum):
    """How a raw feature is encoded: standardised number or one-hot category."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class FeatureSpec(BaseModel):
    """One raw input feature as seen in the training split.

    `categories` (categorical only) lists the training categories in encoding order; `minimum`/`maximum`
    (numeric only) are the observed, non-missing training range; `missing_allowed` is True when the training
    data had missing values (they are imputed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: FeatureKind
    categories: list[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    missing_allowed: bool = False
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
            if self.minimum is not None or self.maximum is not None:
                raise ValueError(f"{self.name}: a categorical feature has no minimum/maximum")
        else:
            if self.categories is not None:
                raise ValueError(f"{self.name}: a numeric feature has no categories")
            if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
                raise ValueError(f"{self.name}: minimum {self.minimum} exceeds maximum {self.maximum}")
        return self
