"""A small Bayesian MLP for NUTS (Pyro): one hidden ReLU layer whose weights are W = A·Bᵀ (low rank) or free
(full rank), Gaussian priors on every factor, a Bernoulli likelihood on the logit.

The low-rank posterior is singular: A·G and B·G⁻ᵀ give the same W for any invertible r×r G, so chains need not
agree on the raw factors; W, its singular values and the predictive probabilities are what can be compared
(:mod:`app.mcmc.diagnostics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor


@dataclass(frozen=True)
class MCMCNetwork:
    """``in_features`` → ``hidden`` (ReLU) → 1 logit. ``low_rank``: each layer's W = A·Bᵀ with A (out, r) and
    B (in, r), r = min(``rank``, out, in), every factor N(0, s²) (``prior_scale`` s); else W free with entries
    N(0, r·s⁴), the variance an entry of A·Bᵀ has under those priors, so both kinds give W the same prior
    variance. Biases N(0, 1)."""

    in_features: int
    hidden: int
    rank: int
    low_rank: bool = True
    prior_scale: float = 1.0

    def weight(self, name: str, out_features: int, in_features: int) -> Tensor:
        """A sampled (out, in) weight."""
        s, r = self.prior_scale, min(self.rank, out_features, in_features)
        if not self.low_rank:
            prior = dist.Normal(torch.zeros(out_features, in_features), s * s * r**0.5)
            return pyro.sample(f"{name}.W", prior.to_event(2))
        a = pyro.sample(f"{name}.A", dist.Normal(torch.zeros(out_features, r), s).to_event(2))
        b = pyro.sample(f"{name}.B", dist.Normal(torch.zeros(in_features, r), s).to_event(2))
        return a @ b.T

    def __call__(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (N, in_features), y: (N,) 0/1 or None -> logits (N,)."""
        w1 = self.weight("hidden", self.hidden, self.in_features)
        b1 = pyro.sample("hidden.bias", dist.Normal(torch.zeros(self.hidden), 1.0).to_event(1))
        w2 = self.weight("out", 1, self.hidden)
        b2 = pyro.sample("out.bias", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        logits = (torch.relu(x @ w1.T + b1) @ w2.T + b2).squeeze(-1)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
        return logits

    def weights(self, draw: dict[str, Tensor]) -> dict[str, Tensor]:
        """One posterior draw's sites -> each layer's W: {"hidden": (hidden, in), "out": (1, hidden)}."""
        if not self.low_rank:
            return {layer: draw[f"{layer}.W"] for layer in ("hidden", "out")}
        return {layer: draw[f"{layer}.A"] @ draw[f"{layer}.B"].transpose(-1, -2) for layer in ("hidden", "out")}

    def logits(self, draw: dict[str, Tensor], x: Tensor) -> Tensor:
        """Draws' sites with a leading (D,) -> their logits on x: (D, N)."""
        w = self.weights(draw)
        hidden = torch.relu(torch.einsum("ni,dhi->dnh", x, w["hidden"]) + draw["hidden.bias"][:, None, :])
        return torch.einsum("dnh,doh->dno", hidden, w["out"]).squeeze(-1) + draw["out.bias"]
