"""Rank-1 multiplicative Bayesian linear layer (Dusenberry et al. 2020), with one mixture component."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.bnn._base import NoiseSpec, Rank1Noise, Rank1Sample, _StochasticLinear
from app.bnn.gaussian import MeanFieldGaussian
from app.bnn.init import InitSpec, reference_variance
from app.bnn.priors import PriorSpec


class Rank1BayesLinear(_StochasticLinear):
    r"""``y = ((x ∘ s) Wᵀ) ∘ r + b``: a point-estimate W scaled by a Bayesian rank-1 factor r sᵀ.

    The prior applies to ``r − 1`` and ``s − 1`` (the perturbation around the identity scaling).

    Args:
        in_features: n.
        out_features: m.
        prior: prior on the entries of ``r − 1`` and ``s − 1``.
        init: reference variance (for W) and η (initial σ of r and s).

    Draws: :class:`Rank1Sample` (scale_out, scale_in) from :class:`Rank1Noise` of the same fields.

    Shape:
        x: (S, N, n) -> (S, N, m)

    Attributes:
        weight: (m, n) point estimate, ~ N(0, σ_W²).
        bias: (m,) point estimate, 0.
        scale_out: (m,) Gaussians r, μ = 1, σ = η.
        scale_in: (n,) Gaussians s, μ = 1, σ = η.
    """

    noise_type = Rank1Noise

    def __init__(
        self,
        in_features: int,
        out_features: int,
        prior: PriorSpec | None = None,
        init: InitSpec | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, prior or PriorSpec(), init or InitSpec())
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory))
        self.scale_out = MeanFieldGaussian((out_features,), prior_offset=1.0, **factory)
        self.scale_in = MeanFieldGaussian((in_features,), prior_offset=1.0, **factory)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = reference_variance(self.in_features, self.out_features, self.init.reference) ** 0.5
        self.weight.normal_(0.0, std, generator=generator)
        self.bias.zero_()
        self.scale_out.reset_parameters(1.0, 0.0, self.init.eta)
        self.scale_in.reset_parameters(1.0, 0.0, self.init.eta)

    def noise_specs(self) -> list[NoiseSpec]:
        return [NoiseSpec(self.scale_out.shape), NoiseSpec(self.scale_in.shape)]

    def sample_from_noise(self, noise: Rank1Noise) -> Rank1Sample:
        """Standard normals (S, m), (S, n) -> r: (S, m), s: (S, n)."""
        eps_out, eps_in = noise
        return Rank1Sample(self.scale_out.transform(eps_out), self.scale_in.transform(eps_in))

    def propagate(self, x: Tensor, weights: Rank1Sample) -> Tensor:
        scale_out, scale_in = weights
        scaled = x * scale_in.unsqueeze(-2)  # (S, N, n)
        return torch.matmul(scaled, self.weight.T) * scale_out.unsqueeze(-2) + self.bias

    def lookup(self, ids: Tensor, weights: Rank1Sample) -> Tensor:
        """ids: (N, L) -> (S, N, L, m): column t of W scaled by s_t, then by r, plus b."""
        scale_out, scale_in = weights
        flat = ids.reshape(-1)
        out = self.weight.T[flat] * scale_in[:, flat].unsqueeze(-1) * scale_out.unsqueeze(-2) + self.bias
        return out.reshape(out.shape[0], *ids.shape, self.out_features)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        return self.scale_out.kl(self.prior, generator) + self.scale_in.kl(self.prior, generator)
