"""Point-estimate baselines in the same interface: deterministic, MC dropout and deep ensemble layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.bnn import functional as BF
from app.bnn._base import DenseSample, DropoutNoise, DropoutSample, NoiseSpec, NoNoise, _StochasticLinear
from app.bnn.init import InitSpec, reference_variance
from app.bnn.priors import PriorSpec


class _PointLinear(_StochasticLinear):
    """Shared weight (M, m, n) and bias (M, m) storage, ~ N(0, σ_W²) and 0; M = 1 unless an ensemble.

    Draws: :class:`DenseSample` (weight, bias), the point estimates themselves, from :class:`NoNoise`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        members: int = 1,
        init: InitSpec | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, PriorSpec(), init or InitSpec())
        factory = {"device": device, "dtype": dtype}
        self.members = members
        self.weight = nn.Parameter(torch.empty((members, out_features, in_features), **factory))
        self.bias = nn.Parameter(torch.empty((members, out_features), **factory))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = reference_variance(self.in_features, self.out_features, self.init.reference) ** 0.5
        self.weight.normal_(0.0, std, generator=generator)
        self.bias.zero_()

    def sample_from_noise(self, noise: NoNoise) -> DenseSample:
        """The point estimates themselves: weight (M, m, n), bias (M, m); there is no noise."""
        return DenseSample(self.weight, self.bias)

    def propagate(self, x: Tensor, weights: DenseSample) -> Tensor:
        weight, bias = weights
        return BF.batched_linear(x, weight, bias)

    def lookup(self, ids: Tensor, weights: DenseSample) -> Tensor:
        return BF.dense_lookup(ids, *weights)


class DeterministicLinear(_PointLinear):
    """``y = x Wᵀ + b`` with one point estimate: the predictive has a single member (no epistemic term).

    Shape:
        x: (S or 1, N, n) -> (1, N, m)
    """

    fixed_samples = 1

    def __init__(self, in_features: int, out_features: int, **kwargs: object) -> None:
        super().__init__(in_features, out_features, members=1, **kwargs)  # type: ignore[arg-type]


class EnsembleLinear(_PointLinear):
    """M independently initialised point estimates evaluated together (a deep ensemble's layer).

    Member k of this layer only ever meets member k of the next, so a network of these is M networks.

    Shape:
        x: (M or 1, N, n) -> (M, N, m)
    """

    def __init__(self, in_features: int, out_features: int, members: int = 5, **kwargs: object) -> None:
        if members < 2:
            raise ValueError(f"an ensemble needs ≥ 2 members, got {members}")
        super().__init__(in_features, out_features, members=members, **kwargs)  # type: ignore[arg-type]
        self.fixed_samples = members

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}"


class MCDropoutLinear(_PointLinear):
    """Dropout on the layer's inputs, kept on at test time (Gal & Ghahramani 2016).

    A drawn mask zeroes input units for every row alike: it is a sampled sub-network (a weight sample),
    so a row's prediction does not depend on which other rows share its batch.

    Args:
        p: probability that an input unit is dropped; 0 turns dropout off (used for the first layer,
            whose inputs are the features themselves).

    Draws: :class:`DropoutSample` (mask) from :class:`DropoutNoise` (uniform); mask None from
    :class:`NoNoise` when p = 0.

    Shape:
        x: (S or 1, N, n) -> (S, N, m)
    """

    def __init__(self, in_features: int, out_features: int, p: float = 0.1, **kwargs: object) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        super().__init__(in_features, out_features, members=1, **kwargs)  # type: ignore[arg-type]
        self.p = p

    @property
    def noise_type(self) -> type[DropoutNoise | NoNoise]:
        return NoNoise if self.p == 0.0 else DropoutNoise

    def noise_specs(self) -> list[NoiseSpec]:
        return [] if self.p == 0.0 else [NoiseSpec((self.in_features,), "uniform")]

    def sample_from_noise(self, noise: DropoutNoise | NoNoise) -> DropoutSample:
        """Uniforms (S, n) -> keep mask scaled by 1/(1 − p): (S, n); mask None when p = 0 (no noise)."""
        if self.p == 0.0:
            return DropoutSample(None)
        (uniform,) = noise
        return DropoutSample((uniform >= self.p).to(self.weight.dtype) / (1.0 - self.p))

    def propagate(self, x: Tensor, weights: DropoutSample) -> Tensor:
        (mask,) = weights
        if mask is not None:
            x = x * mask.unsqueeze(-2)
        return BF.batched_linear(x, self.weight, self.bias)

    def lookup(self, ids: Tensor, weights: DropoutSample) -> Tensor:
        """ids: (N, L) -> (S, N, L, m): a dropped input unit is a dropped vocabulary entry, at every position
        alike (Gal & Ghahramani's embedding dropout)."""
        (mask,) = weights
        table = BF.dense_lookup(ids, self.weight)  # (1, N, L, m), the bias added after the mask
        if mask is not None:
            table = table * mask[:, ids.reshape(-1)].reshape(mask.shape[0], *ids.shape, 1)
        return table + self.bias.unsqueeze(-2).unsqueeze(-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"
