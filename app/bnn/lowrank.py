"""The singular (low-rank) Bayesian linear layer: W = A·Bᵀ with mean-field Gaussian factors."""

from __future__ import annotations

import torch
from torch import Tensor

from app.bnn import functional as BF
from app.bnn._base import LowRankNoise, LowRankSample, NoiseSpec, _StochasticLinear
from app.bnn.gaussian import MeanFieldGaussian
from app.bnn.init import InitSpec, default_damping, factor_scale, reference_variance
from app.bnn.priors import PriorSpec


class LowRankBayesLinear(_StochasticLinear):
    r"""``y = (x B) Aᵀ + b`` with A ∈ R^{m×r}, B ∈ R^{n×r}, b ∈ R^m, every entry an independent Gaussian.

    The induced posterior on W = A Bᵀ lives on rank-r matrices; W is never formed. Variational
    parameters: 2r(m + n) + 2m instead of 2mn + 2m.

    Args:
        in_features: n.
        out_features: m.
        rank: r, 1 ≤ r ≤ min(m, n).
        prior: prior on every factor and bias entry.
        init: variance-matching initialisation.

    Draws: :class:`LowRankSample` (a, b, bias) from :class:`LowRankNoise` of the same fields.

    Shape:
        x: (S, N, n) -> (S, N, m)

    Attributes:
        factor_a: (m, r) Gaussians, μ ~ N(0, (d·s)²), σ = η·s with s = (σ_W²/r)^{1/4}, d the damping.
        factor_b: (n, r) Gaussians, initialised as ``factor_a``.
        bias: (m,) Gaussians, μ = 0, σ = η·σ_W.
    """

    noise_type = LowRankNoise

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        prior: PriorSpec | None = None,
        init: InitSpec | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, prior or PriorSpec(), init or InitSpec())
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.rank = rank
        factory = {"device": device, "dtype": dtype}
        self.factor_a = MeanFieldGaussian((out_features, rank), **factory)
        self.factor_b = MeanFieldGaussian((in_features, rank), **factory)
        self.bias = MeanFieldGaussian((out_features,), **factory)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        variance = reference_variance(self.in_features, self.out_features, self.init.reference)
        scale = factor_scale(variance, self.rank)
        damping = self.init.damping if self.init.damping is not None else default_damping(self.rank)
        for factor in (self.factor_a, self.factor_b):
            factor.reset_parameters(0.0, damping * scale, self.init.eta * scale, generator)
        self.bias.reset_parameters(0.0, 0.0, self.init.eta * variance**0.5)

    @torch.no_grad()
    def warm_start_(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """SVD warm start from a trained dense layer: μ_A = U_r Σ_r^{1/2}, μ_B = V_r Σ_r^{1/2}.

        weight: (m, n), bias: (m,). σ keeps its initial value.
        """
        if weight.shape != (self.out_features, self.in_features):
            raise ValueError(f"weight must be {(self.out_features, self.in_features)}, got {tuple(weight.shape)}")
        u, s, vh = torch.linalg.svd(weight.to(self.factor_a.mu), full_matrices=False)
        root = s[: self.rank].sqrt()
        self.factor_a.mu.copy_(u[:, : self.rank] * root)
        self.factor_b.mu.copy_(vh[: self.rank].T * root)
        if bias is not None:
            self.bias.mu.copy_(bias)

    def noise_specs(self) -> list[NoiseSpec]:
        return [NoiseSpec(p.shape) for p in (self.factor_a, self.factor_b, self.bias)]

    def sample_from_noise(self, noise: LowRankNoise) -> LowRankSample:
        """Standard normals (S, m, r), (S, n, r), (S, m) -> A: (S, m, r), B: (S, n, r), b: (S, m)."""
        eps_a, eps_b, eps_bias = noise
        return LowRankSample(
            self.factor_a.transform(eps_a), self.factor_b.transform(eps_b), self.bias.transform(eps_bias)
        )

    def propagate(self, x: Tensor, weights: LowRankSample) -> Tensor:
        a, b, bias = weights
        return BF.lowrank_linear(x, a, b, bias)

    def lookup(self, ids: Tensor, weights: LowRankSample) -> Tensor:
        """ids: (N, L) -> (S, N, L, m): rows B_s[t] Aₛᵀ + b_s, gathering only the ids' rows of B."""
        a, b, bias = weights
        rows = b.index_select(1, ids.reshape(-1))  # (S, N·L, r)
        out = torch.matmul(rows, a.transpose(-1, -2)) + bias.unsqueeze(-2)
        return out.reshape(out.shape[0], *ids.shape, self.out_features)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        return sum(
            (p.kl(self.prior, generator) for p in (self.factor_a, self.factor_b, self.bias)),
            start=torch.zeros((), device=self.bias.mu.device),
        )

    @torch.no_grad()
    def mean_weight(self) -> Tensor:
        """μ_A μ_Bᵀ: (m, n), for analysis (rank bias, warm-start checks); never used in forward."""
        return self.factor_a.mu @ self.factor_b.mu.T

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
