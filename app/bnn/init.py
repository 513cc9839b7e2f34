"""Initialisation by variance matching (paper notes, "Initialisation").

A dense layer initialised with variance σ_W² (He: 2/n, Glorot: 2/(n+m)) is matched by a rank-r product
whose factor entries have std ``s = (σ_W² / r)^{1/4}``: Var((A Bᵀ)_ij) = r s⁴ = σ_W².
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Reference(str, Enum):
    HE = "he"
    GLOROT = "glorot"


class InitSpec(BaseModel):
    """How layers are initialised; saved with the network spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: Reference = Reference.HE
    damping: float | None = Field(
        None, gt=0.0, description="Multiplier on factor means' std; None follows the paper (0.32 r≤5, 0.55 r>5)."
    )
    eta: float = Field(0.1, gt=0.0, description="Initial posterior std as a fraction of the mean's scale.")


def reference_variance(in_features: int, out_features: int, reference: Reference) -> float:
    """σ_W² of the dense reference initialisation."""
    if reference is Reference.HE:
        return 2.0 / in_features
    return 2.0 / (in_features + out_features)


def factor_scale(variance: float, rank: int) -> float:
    """Std ``s`` of factor entries whose rank-r product has entry variance ``variance``."""
    return (variance / rank) ** 0.25


def default_damping(rank: int) -> float:
    """The paper's damping of factor means: 0.32 for r ≤ 5, 0.55 above."""
    return 0.32 if rank <= 5 else 0.55
