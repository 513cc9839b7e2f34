"""Priors on factor (and weight) entries, each with a KL term against a mean-field Gaussian.

The paper's prior is the scale mixture ``0.5 N(0, 1) + 0.5 N(0, (e^-6)²)``; its KL has no closed form,
so it is estimated by Monte Carlo (one draw, ``log q − log p``), as in the paper. A plain Gaussian prior
has a closed-form KL. :func:`kl_quadrature` gives a deterministic per-entry KL by Gauss–Hermite
quadrature, for tests and bound reports.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from app.bnn import functional as BF
from app.bnn.spec import PriorKind, PriorSpec  # noqa: F401 - re-exported


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


@lru_cache(maxsize=16)
def _cached_rule(family: str, points: int) -> tuple[np.ndarray, np.ndarray]:
    rule = np.polynomial.legendre.leggauss if family == "legendre" else np.polynomial.hermite.hermgauss
    return rule(points)


def _gauss_rule(family: str, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of a Gauss rule ("legendre" or "hermite"), solved once per size: numpy finds them
    by an eigenproblem of order ``points`` (about 0.2 s at 512 nodes), which dominated repeated calls."""
    nodes, weights = _cached_rule(family, points)
    return nodes.copy(), weights.copy()  # callers may share memory with them through torch.as_tensor


def kl_quadrature(mu: Tensor, sigma: Tensor, prior: Prior, points: int = 128) -> Tensor:
    """Per-entry KL(N(mu, sigma²) ‖ prior) by 1-D quadrature: mu, sigma: (*D) -> (*D).

    Gaussian prior: closed form. Scale mixture: ``log p = log(pi N(w; 0, sigma1²)) + g(w)`` with the spike
    correction ``g(w) = log(1 + ((1 − pi)/pi)(sigma1/sigma2) exp(−w²/2 (1/sigma2² − 1/sigma1²)))``; the first
    part has a closed-form expectation, and ``g`` (negligible beyond 10·sigma2) is integrated by
    Gauss–Legendre with ``points`` nodes on the overlap of [−10 sigma2, 10 sigma2] and mu ± 10 sigma, so both
    the narrow spike and a narrow q are resolved. Truncation error is below 1e-15 nats per entry; the
    rule's error is below 1e-9 nats per entry for points ≥ 128 (checked against 512 nodes in the tests).
    Any other prior: Gauss–Hermite over q with ``points`` nodes (at most 150).
    """
    if isinstance(prior, GaussianPrior):
        return BF.kl_gaussian_entries(mu, sigma, 0.0, prior.sigma)
    entropy = torch.log(sigma) + BF.LOG_SQRT_2PI + 0.5
    if not isinstance(prior, ScaleMixturePrior):
        nodes, weights = _gauss_rule("hermite", min(points, 150))
        nodes_t = torch.as_tensor(nodes, dtype=mu.dtype, device=mu.device)
        weights_t = torch.as_tensor(weights / math.sqrt(math.pi), dtype=mu.dtype, device=mu.device)
        w = mu.unsqueeze(-1) + math.sqrt(2.0) * sigma.unsqueeze(-1) * nodes_t  # (*D, points)
        return -entropy - (prior.log_prob(w) * weights_t).sum(-1)
    pi, s1, s2 = prior.pi, prior.sigma1, prior.sigma2
    wide = math.log(pi) - math.log(s1) - BF.LOG_SQRT_2PI - (mu**2 + sigma**2) / (2 * s1**2)
    reach = 10.0 * s2
    lo = torch.maximum(mu - 10.0 * sigma, torch.full_like(mu, -reach))
    hi = torch.minimum(mu + 10.0 * sigma, torch.full_like(mu, reach))
    width = (hi - lo).clamp_min(0.0)
    nodes, weights = _gauss_rule("legendre", points)
    nodes_t = torch.as_tensor(nodes, dtype=mu.dtype, device=mu.device)
    weights_t = torch.as_tensor(weights, dtype=mu.dtype, device=mu.device)
    w = (lo + hi).unsqueeze(-1) / 2 + width.unsqueeze(-1) / 2 * nodes_t  # (*D, points)
    log_ratio = math.log((1 - pi) / pi) + math.log(s1 / s2) - 0.5 * w**2 * (1 / s2**2 - 1 / s1**2)
    q = torch.exp(BF.gaussian_log_prob(w, mu.unsqueeze(-1), sigma.unsqueeze(-1)))
    spike = (q * torch.nn.functional.softplus(log_ratio) * weights_t).sum(-1) * width / 2
    return -entropy - wide - spike
