"""A block of independent Gaussian parameters: the mean-field posterior every Bayesian layer is built from."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.bnn import functional as BF
from app.bnn.priors import Prior


class MeanFieldGaussian(nn.Module):
    """q(θ) = Π N(θ_i; μ_i, σ_i²) with σ = softplus(ρ).

    Args:
        shape: shape of the parameter block.
        prior_offset: the prior applies to ``θ − prior_offset`` (1 for multiplicative factors, else 0).

    Attributes:
        mu: (*shape) posterior means.
        rho: (*shape) pre-softplus scales, ``sigma = softplus(rho)``.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        prior_offset: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.shape = tuple(shape)
        self.prior_offset = prior_offset
        self.mu = nn.Parameter(torch.empty(self.shape, **factory))
        self.rho = nn.Parameter(torch.empty(self.shape, **factory))

    @torch.no_grad()
    def reset_parameters(
        self, mean: float, mean_std: float, sigma: float, generator: torch.Generator | None = None
    ) -> None:
        """μ ~ N(mean, mean_std²) (exactly ``mean`` when mean_std is 0); σ = ``sigma`` everywhere."""
        if mean_std > 0:
            self.mu.normal_(mean, mean_std, generator=generator)
        else:
            self.mu.fill_(mean)
        self.rho.fill_(float(BF.rho_from_sigma(sigma)))

    @property
    def sigma(self) -> Tensor:
        return BF.sigma_from_rho(self.rho)

    def transform(self, eps: Tensor) -> Tensor:
        """Reparameterised draws from given standard normals ``mu + sigma * eps``: (S, *shape) -> (S, *shape)."""
        return self.mu + self.sigma * eps

    def kl(self, prior: Prior, generator: torch.Generator | None = None) -> Tensor:
        """KL(q ‖ prior) summed over the block (Monte Carlo or closed form, as the prior provides)."""
        return prior.kl(self.mu - self.prior_offset, self.sigma, generator)

    def extra_repr(self) -> str:
        offset = f", prior_offset={self.prior_offset}" if self.prior_offset else ""
        return f"shape={self.shape}{offset}"
