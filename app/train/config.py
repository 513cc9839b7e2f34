"""Training options: one dataclass filled from the CLI and saved whole in the manifest."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.bnn.init import Reference
from app.bnn.spec import Activation, LayerKind, PriorKind


class ClassWeight(str, Enum):
    NONE = "none"  # plain likelihood: calibrated probabilities (default)
    BALANCED = "balanced"  # each class weighted by N / (C · N_c), as the paper's 11.88 for deaths


class TrainConfig(BaseModel):
    """Options of ``sbnn train``; defaults follow the paper's clinical MLP where it gives them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: LayerKind = LayerKind.LOWRANK
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    rank: int = Field(15, ge=1, description="Rank of hidden layers (capped at min(m, n)); output rank 1.")
    ranks: list[int] | None = Field(None, description="Explicit rank per layer; overrides rank.")
    activation: Activation = Activation.RELU
    prior: PriorKind = PriorKind.MIXTURE
    init_reference: Reference = Reference.HE
    eta: float = Field(0.1, gt=0.0)
    damping: float | None = Field(None, gt=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    members: int = Field(5, ge=2, le=64)
    epochs: int = Field(200, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    beta: float = Field(0.5, ge=0.0, description="KL weight relative to the ELBO (1 = plain ELBO).")
    kl_warmup_epochs: int = Field(
        10, ge=0, validate_default=True, description="Linear KL annealing from 0 to beta over these epochs."
    )
    patience: int = Field(20, ge=1, description="Early stopping: epochs without a better validation NLL.")
    class_weight: ClassWeight = ClassWeight.NONE
    val_samples: int = Field(32, ge=1, description="MC samples for the validation NLL each epoch.")
    default_samples: int = Field(512, ge=1, description="MC samples at test time, stored in the manifest.")
    target_fpr: float = Field(
        0.02, gt=0.0, lt=1.0, description="OOD gate: the false-positive budget of the union of its components."
    )
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    warm_start: str | None = Field(
        None,
        min_length=1,
        description="Folder of a trained deterministic checkpoint (same data and hidden sizes) whose weights' "
        "rank-r SVD truncations initialise the factor means (lowrank only).",
    )

    @field_validator("kl_warmup_epochs")
    @classmethod
    def _warmup_within_epochs(cls, value: int, info: ValidationInfo) -> int:
        epochs = info.data.get("epochs")
        if epochs is not None and value > epochs:
            raise ValueError(
                f"the KL warm-up ({value} epochs) is longer than the training ({epochs} epoch{'s' * (epochs != 1)}): "
                "only an epoch at the end of the warm-up or later can be kept as the best, so no epoch would be "
                "kept; shorten the warm-up or train for more epochs."
            )
        return value

    @field_validator("warm_start")
    @classmethod
    def _warm_start_is_lowrank(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if value is not None and kind is not None and kind is not LayerKind.LOWRANK:
            raise ValueError(f"warm_start applies to kind 'lowrank' only, not '{kind.value}'")
        return value
