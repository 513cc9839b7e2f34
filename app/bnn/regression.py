"""The heteroscedastic Gaussian likelihood and its Monte Carlo predictive: an equal-weight mixture of S
Gaussians, one per weight sample.

Per sample s the head gives a mean μ_s and a variance σ_s² = softplus(raw) + ``MIN_VARIANCE``. The predictive
p(y | x) = (1/S) Σ_s N(y; μ_s, σ_s²) has mean μ̄ = mean_s μ_s and variance = aleatoric + epistemic, with
aleatoric = mean_s σ_s² and epistemic = var_s μ_s (the law of total variance; the epistemic part is the gate's
score for regression). Intervals are the mixture's own central quantiles, found by bisection on its CDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torch.nn import functional as F

from app.bnn.spec import BISECTION_STEPS, MIN_VARIANCE


def gaussian_parameters(head: Tensor) -> tuple[Tensor, Tensor]:
    """head: (S, N, 2k), means then raw scales -> mean (S, N, k), variance (S, N, k)."""
    mean, raw = head.chunk(2, dim=-1)
    return mean, F.softplus(raw) + MIN_VARIANCE


def gaussian_nll(head: Tensor, y: Tensor) -> Tensor:
    """Per-sample negative log-likelihood, head: (S, N, 2k), y: (N, k) -> (S, N) summed over targets (the
    training loss of one weight sample per step)."""
    mean, variance = gaussian_parameters(head)
    return 0.5 * (torch.log(2 * math.pi * variance) + (y - mean).square() / variance).sum(-1)


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))


def _expected_abs(mean: Tensor, std: Tensor) -> Tensor:
    """E|Z| for Z ~ N(mean, std²), elementwise."""
    z = mean / std
    return std * math.sqrt(2 / math.pi) * torch.exp(-0.5 * z.square()) + mean * (1 - 2 * _normal_cdf(-z))


@dataclass
class GaussianPredictive:
    """The mixture predictive of S Gaussians: means (S, N, k) and variances (S, N, k)."""

    means: Tensor
    variances: Tensor

    @classmethod
    def from_head(cls, head: Tensor) -> GaussianPredictive:
        return cls(*gaussian_parameters(head))

    @property
    def samples(self) -> int:
        return self.means.shape[0]

    @cached_property
    def mean(self) -> Tensor:
        """(N, k)."""
        return self.means.mean(0)

    @cached_property
    def aleatoric(self) -> Tensor:
        """mean_s σ_s²: (N, k)."""
        return self.variances.mean(0)

    @cached_property
    def epistemic(self) -> Tensor:
        """var_s μ_s (over the S samples, divisor S): (N, k)."""
        return (self.means - self.mean).square().mean(0)

    @property
    def total(self) -> Tensor:
        """The predictive variance, aleatoric + epistemic: (N, k)."""
        return self.aleatoric + self.epistemic

    def cdf(self, y: Tensor) -> Tensor:
        """P(Y ≤ y) under the mixture, y: (N, k) -> (N, k)."""
        return _normal_cdf((y - self.means) / self.variances.sqrt()).mean(0)

    def log_prob(self, y: Tensor) -> Tensor:
        """log p(y), y: (N, k) -> (N, k), by log-sum-exp over the samples."""
        log_each = -0.5 * (torch.log(2 * math.pi * self.variances) + (y - self.means).square() / self.variances)
        return torch.logsumexp(log_each, dim=0) - math.log(self.samples)

    def quantile(self, q: float) -> Tensor:
        """The mixture's q-quantile, 0 < q < 1: (N, k), by bisection in float64 on its CDF."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q}")
        means, std = self.means.double(), self.variances.double().sqrt()
        low, high = (means - 10 * std).amin(0), (means + 10 * std).amax(0)
        for _ in range(BISECTION_STEPS):
            middle = 0.5 * (low + high)
            below = _normal_cdf((middle - means) / std).mean(0) < q
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        return (0.5 * (low + high)).to(self.means.dtype)

    def interval(self, level: float) -> tuple[Tensor, Tensor]:
        """The central ``level`` interval (e.g. 0.9: from the 5% to the 95% quantile): two (N, k) tensors."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def crps(self, y: Tensor) -> Tensor:
        """The continuous ranked probability score of the mixture at y: (N, k), closed form
        E|X − y| − ½ E|X − X'| (Grimit et al. 2006), the pairwise term over all S² sample pairs."""
        std = self.variances.sqrt()
        to_y = _expected_abs(y - self.means, std).mean(0)
        pair_mean = self.means.unsqueeze(0) - self.means.unsqueeze(1)  # (S, S, N, k)
        pair_std = (self.variances.unsqueeze(0) + self.variances.unsqueeze(1)).sqrt()
        between = _expected_abs(pair_mean, pair_std).mean((0, 1))
        return to_y - 0.5 * between
