"""Local reparameterisation through a low-rank network's factors: rows × samples with noise per row.

Given a layer's input h, the entries of z = h·B are independent Gaussians with mean h·μ_B and variance
h²·σ_B², and given z those of z·Aᵀ + c are too (mean z·μ_Aᵀ + μ_c, variance z²·σ_Aᵀ² + σ_c²). So each row and
sample needs r + m standard normals per layer instead of r(m + n) weight entries, and each row's predictive is
exact (rows no longer share weight draws). One function serves the torch engine (noise from a torch generator)
and the exported ONNX graph (noise as graph inputs, from numpy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from app.bnn.fused import activate
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import BayesianMLP

# Per low-rank layer: μ_B (n, r), σ_B² (n, r), μ_Aᵀ (r, m), σ_Aᵀ² (r, m), μ_c (m,), σ_c² (m,).
LayerMoments = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
# noise(shape) -> standard normals of that shape: (S, N, r) then (S, N, m) per layer, layer by layer.
NoiseSource = Callable[[tuple[int, ...]], Tensor]


def layer_moments(model: BayesianMLP) -> list[LayerMoments]:
    """The moments local reparameterisation reads, per low-rank layer (detached: the model is frozen)."""
    return [
        (
            layer.factor_b.mu.detach(),
            layer.factor_b.sigma.detach().square(),
            layer.factor_a.mu.detach().T.contiguous(),
            layer.factor_a.sigma.detach().square().T.contiguous(),
            layer.bias.mu.detach(),
            layer.bias.sigma.detach().square(),
        )
        for layer in model.layers
        if isinstance(layer, LowRankBayesLinear)
    ]


def noise_widths(model: BayesianMLP) -> list[tuple[int, int]]:
    """Per layer, the per-row, per-sample noise widths (r, m) that ``local_logits`` draws, in draw order."""
    return [(layer.rank, layer.out_features) for layer in model.layers if isinstance(layer, LowRankBayesLinear)]


def local_logits(
    x: Tensor, moments: list[LayerMoments], samples: int, noise: NoiseSource, model: BayesianMLP
) -> Tensor:
    """x: (N, n) -> logits (S, N, k), with S = ``samples`` and the normals from ``noise`` (see NoiseSource)."""
    last = len(moments) - 1
    rows = x.shape[0]
    h = x  # (N, n): the first layer's input is shared by every sample
    for i, (mu_b, var_b, mu_at, var_at, mu_c, var_c) in enumerate(moments):
        rank = mu_b.shape[1]
        flat = h.reshape(-1, h.shape[-1])  # (N or S·N, n)
        mean, std = flat @ mu_b, torch.mm(flat.square(), var_b).sqrt_()  # (·, r)
        eps = noise((samples, rows, rank))
        if i:  # (S·N, r) like mean; the first layer's mean (N, r) broadcasts over the samples instead
            eps = eps.reshape(mean.shape)
        z = torch.addcmul(mean, std, eps).reshape(-1, rank)  # (S·N, r)
        mean = torch.addmm(mu_c, z, mu_at)
        std = torch.addmm(var_c, z.square(), var_at).sqrt_()
        eps = noise((samples, rows, mean.shape[-1])).reshape(mean.shape)
        h = torch.addcmul(mean, std, eps).reshape(samples, rows, -1)
        if i < last:
            h = activate(h, model)
    return h
