"""Pure math shared by every layer kind: softplus scales, reparameterised draws, densities and KL terms.

Shapes use S samples, N rows, n inputs, m outputs, r rank. Nothing here owns parameters or touches the
global random state: every draw takes a ``generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def sigma_from_rho(rho: Tensor) -> Tensor:
    """Standard deviation ``softplus(rho)``; ``rho`` is the unconstrained (pre-softplus) parameter."""
    return F.softplus(rho)


def rho_from_sigma(sigma: float | Tensor) -> Tensor:
    """Inverse of :func:`sigma_from_rho`: ``log(expm1(sigma))``, computed stably for small sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.get_default_dtype())
    return sigma + torch.log(-torch.expm1(-sigma))


def standard_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def sample_gaussian(mu: Tensor, sigma: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Reparameterised draws ``mu + sigma * eps``: mu, sigma: (*D) -> (S, *D)."""
    eps = standard_normal((samples, *mu.shape), mu, generator)
    return mu + sigma * eps


def lowrank_linear(x: Tensor, a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = (x B) Aᵀ + bias`` without forming ``W = A Bᵀ``.

    x: (S or 1, N, n), a: (S, m, r), b: (S, n, r), bias: (S, m) -> (S, N, m).
    Cost r(n + m) per row and sample instead of mn.
    """
    hidden = torch.matmul(x, b)  # (S, N, r)
    if bias is not None and hidden.dim() == 3 and hidden.shape[0] == a.shape[0]:
        return torch.baddbmm(bias.unsqueeze(-2), hidden, a.transpose(-1, -2))  # the bias added in the same kernel
    out = torch.matmul(hidden, a.transpose(-1, -2))  # (S, N, m)
    if bias is not None:
        out = out + bias.unsqueeze(-2)
    return out


def batched_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """One weight matrix per sample: x: (S or 1, N, n), weight: (S, m, n), bias: (S, m) -> (S, N, m)."""
    out = torch.matmul(x, weight.transpose(-1, -2))
    if bias is not None:
        out = out + bias.unsqueeze(-2)
    return out


def dense_lookup(ids: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Columns of one weight matrix per sample, an embedding table's rows: ids: (N, L) in [0, n),
    weight: (S, m, n), bias: (S, m) -> (S, N, L, m)."""
    out = weight.transpose(-1, -2)[:, ids.reshape(-1)]  # (S, N·L, m)
    if bias is not None:
        out = out + bias.unsqueeze(-2)
    return out.reshape(out.shape[0], *ids.shape, weight.shape[-2])


def gaussian_log_prob(w: Tensor, mu: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Elementwise log N(w; mu, sigma²)."""
    sigma = torch.as_tensor(sigma, dtype=w.dtype, device=w.device)
    z = (w - mu) / sigma
    return -0.5 * z * z - torch.log(sigma) - LOG_SQRT_2PI


def scale_mixture_log_prob(w: Tensor, pi: float, sigma1: float, sigma2: float) -> Tensor:
    """Elementwise log of ``pi N(w; 0, sigma1²) + (1 - pi) N(w; 0, sigma2²)`` (both figures are std devs)."""
    log_a = gaussian_log_prob(w, 0.0, sigma1) + math.log(pi)
    log_b = gaussian_log_prob(w, 0.0, sigma2) + math.log1p(-pi)
    return torch.logaddexp(log_a, log_b)


def kl_gaussian_entries(mu: Tensor, sigma: Tensor, prior_mu: float, prior_sigma: float) -> Tensor:
    """Closed-form KL(N(mu, sigma²) ‖ N(prior_mu, prior_sigma²)) per entry: (*D) -> (*D)."""
    var_ratio = (sigma / prior_sigma) ** 2
    mean_term = ((mu - prior_mu) / prior_sigma) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - torch.log(var_ratio))


def kl_gaussian(mu: Tensor, sigma: Tensor, prior_mu: float, prior_sigma: float) -> Tensor:
    """Closed-form KL(N(mu, sigma²) ‖ N(prior_mu, prior_sigma²)) summed over all entries."""
    return kl_gaussian_entries(mu, sigma, prior_mu, prior_sigma).sum()


def gaussian_entropy(sigma: Tensor) -> Tensor:
    """Entropy of N(·, sigma²) summed over entries: Σ (log sigma + ½ log 2πe)."""
    return (torch.log(sigma) + LOG_SQRT_2PI + 0.5).sum()
