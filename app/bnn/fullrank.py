"""Full-rank mean-field Bayes-by-Backprop linear layer (Blundell et al. 2015), the main baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from app.bnn import functional as BF
from app.bnn._base import DenseNoise, DenseSample, NoiseSpec, _StochasticLinear
from app.bnn.gaussian import MeanFieldGaussian
from app.bnn.init import InitSpec, reference_variance
from app.bnn.priors import PriorSpec


class BayesLinear(_StochasticLinear):
    r"""``y = x Wᵀ + b`` with every entry of W ∈ R^{m×n} and b ∈ R^m an independent Gaussian.

    Args:
        in_features: n.
        out_features: m.
        prior: prior on every weight and bias entry.
        init: reference variance and η.

    Draws: :class:`DenseSample` (weight, bias) from :class:`DenseNoise` of the same fields.

    Shape:
        x: (S, N, n) -> (S, N, m)

    Attributes:
        weight: (m, n) Gaussians, μ ~ N(0, σ_W²), σ = η·σ_W.
        bias: (m,) Gaussians, μ = 0, σ = η·σ_W.
    """

    noise_type = DenseNoise

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
        self.weight = MeanFieldGaussian((out_features, in_features), **factory)
        self.bias = MeanFieldGaussian((out_features,), **factory)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = reference_variance(self.in_features, self.out_features, self.init.reference) ** 0.5
        self.weight.reset_parameters(0.0, std, self.init.eta * std, generator)
        self.bias.reset_parameters(0.0, 0.0, self.init.eta * std)

    def noise_specs(self) -> list[NoiseSpec]:
        return [NoiseSpec(self.weight.shape), NoiseSpec(self.bias.shape)]

    def sample_from_noise(self, noise: DenseNoise) -> DenseSample:
        """Standard normals (S, m, n), (S, m) -> W: (S, m, n), b: (S, m)."""
        eps_weight, eps_bias = noise
        return DenseSample(self.weight.transform(eps_weight), self.bias.transform(eps_bias))

    def propagate(self, x: Tensor, weights: DenseSample) -> Tensor:
        weight, bias = weights
        return BF.batched_linear(x, weight, bias)

    def lookup(self, ids: Tensor, weights: DenseSample) -> Tensor:
        return BF.dense_lookup(ids, *weights)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        return self.weight.kl(self.prior, generator) + self.bias.kl(self.prior, generator)
