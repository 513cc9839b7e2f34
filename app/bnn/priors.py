"""Priors on factor (and weight) entries, each with a KL term against a mean-field Gaussian.

The paper's prior is the scale mixture ``0.5 N(0, 1) + 0.5 N(0, (e^-6)²)``; its KL has no closed form,
so it is estimated by Monte Carlo (one draw, ``log q − log p``), as in the paper. A plain Gaussian prior
has a closed-form KL. :func:`kl_quadrature` gives a deterministic per-entry KL by Gauss–Hermite
quadrature, for tests and bound reports.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from app.bnn import functional as BF


class PriorKind(str, Enum):
    MIXTURE = "mixture"
    GAUSSIAN = "gaussian"


class PriorSpec(BaseModel):
    """Serializable description of a prior; ``build()`` returns the prior object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: PriorKind = PriorKind.MIXTURE
    pi: float = Field(0.5, gt=0.0, lt=1.0, description="Weight of the wide component (mixture).")
    sigma1: float = Field(1.0, gt=0.0, description="Std dev of the wide component (mixture).")
    sigma2: float = Field(math.exp(-6.0), gt=0.0, description="Std dev of the narrow component (mixture).")
    sigma: float = Field(1.0, gt=0.0, description="Std dev of the Gaussian prior.")

    def build(self) -> Prior:
        if self.kind is PriorKind.MIXTURE:
            return ScaleMixturePrior(self.pi, self.sigma1, self.sigma2)
        return GaussianPrior(self.sigma)


class Prior(Protocol):
    def log_prob(self, w: Tensor) -> Tensor: ...

    def kl(self, mu: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


class GaussianPrior:
    """N(0, sigma²) on every entry; closed-form KL."""

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = sigma

    def log_prob(self, w: Tensor) -> Tensor:
        return BF.gaussian_log_prob(w, 0.0, self.sigma)

    def kl(self, mu: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sum over entries of KL(N(mu, sigma²) ‖ N(0, prior sigma²)); ``generator`` is unused."""
        return BF.kl_gaussian(mu, sigma, 0.0, self.sigma)


class ScaleMixturePrior:
    """``pi N(0, sigma1²) + (1 − pi) N(0, sigma2²)`` on every entry; Monte Carlo KL."""

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6.0)) -> None:
        self.pi, self.sigma1, self.sigma2 = pi, sigma1, sigma2

    def log_prob(self, w: Tensor) -> Tensor:
        return BF.scale_mixture_log_prob(w, self.pi, self.sigma1, self.sigma2)

    def kl(self, mu: Tensor, sigma: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One-draw estimate of Σ KL: ``Σ log q(w) − log p(w)`` at ``w = mu + sigma·eps``.

        Unbiased; the Gaussian's entropy is used in closed form, which lowers the variance without bias.
        """
        w = BF.sample_gaussian(mu, sigma, 1, generator)[0]
        return -BF.gaussian_entropy(sigma) - self.log_prob(w).sum()


def kl_quadrature(mu: Tensor, sigma: Tensor, prior: Prior, points: int = 128) -> Tensor:
    """Per-entry KL(N(mu, sigma²) ‖ prior) by Gauss–Hermite quadrature: mu, sigma: (*D) -> (*D).

    ``E_q[log p(w)]`` is integrated with ``points`` nodes; the error grows when sigma is much wider
    than the prior's narrow component (the integrand then has a sharp spike), so raise ``points`` there.
    """
    nodes, weights = np.polynomial.hermite.hermgauss(points)
    nodes_t = torch.as_tensor(nodes, dtype=mu.dtype, device=mu.device)
    weights_t = torch.as_tensor(weights / math.sqrt(math.pi), dtype=mu.dtype, device=mu.device)
    w = mu.unsqueeze(-1) + math.sqrt(2.0) * sigma.unsqueeze(-1) * nodes_t  # (*D, points)
    expected_log_prior = (prior.log_prob(w) * weights_t).sum(-1)
    entropy = torch.log(sigma) + BF.LOG_SQRT_2PI + 0.5
    return -entropy - expected_log_prior
