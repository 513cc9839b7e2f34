"""The posterior predictive and its uncertainty decomposition (nats).

One front door: :func:`predict` draws S weight samples once, pushes rows through them in chunks and
returns a :class:`Predictive`; :func:`decompose` splits its entropy into aleatoric and epistemic parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from app.bnn._base import LayerSample
from app.bnn.network import BayesianMLP, Likelihood
from app.bnn.spec import MC_ERROR_GROUPS, MonteCarloError


@dataclass(frozen=True)
class Predictive:
    """Per-sample class probabilities ``probs``: (S, N, C) and their mean (the posterior predictive)."""

    probs: Tensor

    @property
    def mean(self) -> Tensor:
        """p̄ = mean_s p_s: (N, C)."""
        return self.probs.mean(0)

    @property
    def samples(self) -> int:
        return self.probs.shape[0]


@dataclass(frozen=True)
class Uncertainty:
    """Per-row uncertainty, each (N,): total = H[p̄], aleatoric = mean_s H[p_s],
    epistemic = MI = total − aleatoric (clipped at 0), std = std over samples of p(predicted class)."""

    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    std: Tensor


def class_probabilities(logits: Tensor, likelihood: Likelihood) -> Tensor:
    """logits: (S, N, k) -> probs: (S, N, C); a Bernoulli logit becomes two classes [1 − p, p]."""
    if likelihood is Likelihood.BERNOULLI:
        positive = torch.sigmoid(logits[..., 0])
        return torch.stack([1.0 - positive, positive], dim=-1)
    return torch.softmax(logits, dim=-1)


def entropy(probs: Tensor) -> Tensor:
    """H[p] = −Σ_c p_c log p_c over the last axis, 0·log 0 = 0: (..., C) -> (...)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def decompose(predictive: Predictive) -> Uncertainty:
    """Total, aleatoric and epistemic (mutual information) uncertainty, in nats."""
    probs = predictive.probs
    mean = predictive.mean
    total = entropy(mean)
    aleatoric = entropy(probs).mean(0)
    epistemic = (total - aleatoric).clamp_min(0.0)
    predicted = mean.argmax(-1)  # (N,)
    chosen = probs.gather(-1, predicted.expand(probs.shape[0], -1).unsqueeze(-1)).squeeze(-1)  # (S, N)
    std = chosen.std(0, correction=0)
    return Uncertainty(total=total, aleatoric=aleatoric, epistemic=epistemic, std=std)


def mutual_information_error(probs: Tensor, per_sample: Tensor, groups: int = MC_ERROR_GROUPS) -> Tensor:
    """The Monte Carlo standard error of each row's mutual information by a delete-one-group jackknife:
    probs (S, N, C) and their per-sample entropies (S, N) -> (N,). The S samples (the first G·⌊S/G⌋ of them)
    fall into G = min(``groups``, S) groups; the MI is recomputed without each group (from running sums, no
    second pass) and SE² = (G − 1)/G · Σ_g (MI₋g − mean MI₋g)². S ≥ 2."""
    samples, rows, classes = probs.shape
    g = min(groups, samples)
    size = samples // g
    used = g * size
    group_p = probs[:used].double().reshape(g, size, rows, classes).sum(1)  # (G, N, C)
    group_h = per_sample[:used].double().reshape(g, size, rows).sum(1)  # (G, N)
    left_out = used - size
    mi = entropy((group_p.sum(0) - group_p) / left_out) - (group_h.sum(0) - group_h) / left_out  # (G, N)
    return ((g - 1) / g * (mi - mi.mean(0)).square().sum(0)).sqrt().to(probs.dtype)


def decompose_with_error(predictive: Predictive) -> tuple[Uncertainty, MonteCarloError]:
    """``decompose`` and ``engine.monte_carlo_error`` in one pass over the samples: each sample's entropy is
    computed once and serves the aleatoric term and the jackknife error of the mutual information alike,
    and the predicted class's probabilities once for its std and its standard error. (S, N, C) -> (N,) each,
    and the largest-over-rows errors."""
    probs = predictive.probs
    samples = probs.shape[0]
    mean = probs.mean(0)
    per_sample = entropy(probs)  # (S, N)
    total = entropy(mean)
    aleatoric = per_sample.mean(0)
    epistemic = (total - aleatoric).clamp_min(0.0)
    chosen = probs.gather(-1, mean.argmax(-1).expand(samples, -1).unsqueeze(-1)).squeeze(-1)  # (S, N)
    std = chosen.std(0, correction=0)
    uncertainty = Uncertainty(total=total, aleatoric=aleatoric, epistemic=epistemic, std=std)
    if samples < 2:
        return uncertainty, MonteCarloError(0.0, 0.0)
    se_p = float((chosen.std(0) / math.sqrt(samples)).max())
    return uncertainty, MonteCarloError(se_p, float(mutual_information_error(probs, per_sample).max()))


# Rows per chunk are chosen so one chunk's widest activation (S, rows, width) stays near this many floats.
CHUNK_FLOATS = 1 << 22


def auto_chunk_rows(model: BayesianMLP, samples: int) -> int:
    """Rows per chunk that keep an activation of S × rows × widest layer under ``CHUNK_FLOATS`` floats."""
    widest = max(m for _, m in model.spec.layer_shapes())
    return max(1, CHUNK_FLOATS // (samples * widest))


@torch.no_grad()
def predict_with(
    model: BayesianMLP, x: Tensor, weights: list[LayerSample], chunk_rows: int | None = None
) -> Predictive:
    """x: (N, d) through already drawn ``weights`` (from ``model.sample``) -> Predictive (S, N, C).

    Rows are chunked to bound memory; chunk boundaries depend only on N and S, so the same request gives
    bitwise the same answer.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    samples = weights_samples(weights)
    chunk_rows = chunk_rows or auto_chunk_rows(model, samples)
    was_training = model.training
    model.eval()
    try:
        chunks = [
            class_probabilities(model.propagate(part, weights), model.spec.likelihood) for part in x.split(chunk_rows)
        ]
    finally:
        model.train(was_training)
    return Predictive(probs=torch.cat(chunks, dim=1))


def weights_samples(weights: list[LayerSample]) -> int:
    """S of a draw from ``BayesianMLP.sample`` (the leading dimension of its first tensor)."""
    for layer in weights:
        for tensor in layer:
            if tensor is not None:
                return tensor.shape[0]
    return 1


@torch.no_grad()
def predict(
    model: BayesianMLP,
    x: Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    chunk_rows: int | None = None,
) -> Predictive:
    """x: (N, d) -> Predictive with probs (S, N, C), S = ``model.num_samples(samples)``.

    The S weight samples are drawn once and shared by every row, so a row's answer does not depend on
    the chunking or on which rows share the call.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    weights = model.sample(model.num_samples(samples), generator)
    return predict_with(model, x, weights, chunk_rows)
