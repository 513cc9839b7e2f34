"""Convergence of chains on what a singular posterior can identify.

R-hat (split Gelman–Rubin) and the effective sample size (Pyro's, over all chains) of each quantity's every
element, summarised per group: the raw factors (A, B; or a full-rank network's W), W = A·Bᵀ, W's singular values
(sorted, so a permutation or sign flip of the factors' columns does not change them) and the held-out predictive
probabilities. A·G, B·G⁻ᵀ leave W unchanged, so the factors can mix badly while W and the predictions converge;
hidden units can still swap between chains, which W (unlike its singular values) sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

from app.mcmc.model import MCMCNetwork


@dataclass(frozen=True)
class Convergence:
    """One group's R-hat and ESS over its elements (``n`` of them)."""

    n: int
    rhat_median: float
    rhat_max: float
    ess_median: float
    ess_min: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: v if isinstance(v, int) else round(float(v), 4) for k, v in vars(self).items()}


def convergence(draws: Tensor) -> Convergence:
    """draws: (C, D, ...) chains × draws × elements -> their R-hat and ESS summary."""
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1).double()
    rhat = split_gelman_rubin(flat, chain_dim=0, sample_dim=1)
    ess = effective_sample_size(flat, chain_dim=0, sample_dim=1)
    # An element constant over every draw has no R-hat, one constant within each chain no ESS: left out (an
    # ESS of 0 when none has one).
    rhat, ess = rhat[torch.isfinite(rhat)], ess[torch.isfinite(ess)]
    return Convergence(
        n=int(flat.shape[-1]),
        rhat_median=float(rhat.median()),
        rhat_max=float(rhat.max()),
        ess_median=float(ess.median()) if ess.numel() else 0.0,
        ess_min=float(ess.min()) if ess.numel() else 0.0,
    )


def identifiable_quantities(network: MCMCNetwork, by_chain: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Sites by chain ({site: (C, D, ...)}) and held-out rows x (N, n) -> each group's draws (C, D, ...): the
    raw factors, W of both layers, the hidden layer's singular values and the probabilities on x."""
    chains, draws = next(iter(by_chain.values())).shape[:2]
    flat = {name: value.reshape(chains * draws, *value.shape[2:]) for name, value in by_chain.items()}
    raw_sites = ("hidden.A", "hidden.B", "out.A", "out.B") if network.low_rank else ("hidden.W", "out.W")
    raw = torch.cat([flat[site].reshape(chains * draws, -1) for site in raw_sites], dim=1)
    w = network.weights(flat)
    weights = torch.cat([w["hidden"].reshape(chains * draws, -1), w["out"].reshape(chains * draws, -1)], dim=1)
    singular = torch.linalg.svdvals(w["hidden"])  # (C·D, min(hidden, in)), descending
    probabilities = torch.sigmoid(network.logits(flat, x))
    groups = {"raw factors": raw, "W": weights, "singular values": singular, "held-out probabilities": probabilities}
    return {name: value.reshape(chains, draws, -1) for name, value in groups.items()}
