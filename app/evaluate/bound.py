"""The PAC-Bayes (McAllester) bound of a trained Bayesian network, per layer and global.

With probability ≥ 1 − δ over the draw of the N training rows, for a prior P fixed before seeing them and
every posterior Q, the expected 0–1 risk of the Gibbs classifier (draw w ~ Q, predict with w) obeys

    L(Q) ≤ L̂(Q) + sqrt((KL(Q‖P) + ln(2√N/δ)) / (2N)),

L̂ the Gibbs empirical risk on those rows. The KL of a mean-field posterior is a sum over its entries; against
the scale-mixture prior each entry's KL is a 1-D integral, done here by quadrature (see
:func:`app.bnn.priors.kl_quadrature`). A deterministic twin (the same layers trained without a posterior)
adds the Eckart–Young view: the rank bias σ_{>r} of its weights and how much of their energy rank r keeps.

Dimensions: S samples, N rows, n in, m out, r rank, C classes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.bnn import functional as BF
from app.bnn.gaussian import MeanFieldGaussian
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import BayesianMLP
from app.bnn.predictive import predict_with
from app.bnn.priors import kl_quadrature
from app.bnn.rank1 import Rank1BayesLinear
from app.bnn.spec import BAYESIAN_KINDS, LayerKind, PriorKind, PriorSpec
from app.checkpoint.io import Checkpoint
from app.data.dataset import TabularDataset
from app.errors import BoundError

# Entries per quadrature call: (entries, points) float64 intermediates stay near 16 MB at 512 nodes.
KL_CHUNK_ENTRIES = 4096
# Rows per forward block of the Gibbs risk: the block's probabilities (S, rows, C) are reduced at once.
RISK_CHUNK_ROWS = 8192
MIN_POINTS = 8  # the coarse rule uses points // 4 nodes, at least 2

RANK1_CAVEAT = (
    "rank1 keeps W and its bias as point estimates fitted to the same training rows, outside the KL: the figure "
    "bounds the Gibbs classifier over the scales r, s given W and understates the model's complexity; it is "
    "not a valid PAC-Bayes bound for the whole network."
)


@dataclass(frozen=True)
class LayerBound:
    """One linear layer's share of the bound; W ∈ R^{m×n}.

    Attributes:
        index: position in the network, 0 = the input layer.
        shape: (m, n) = (out, in).
        rank: r of a lowrank layer; None for other kinds.
        factor_parameters: entries of the weight's stochastic part: r(m + n) lowrank, mn fullrank, m + n rank1
            (its scales r and s).
        dense_parameters: mn, the entries of a full-rank weight.
        complexity_ratio: sqrt(factor_parameters / dense_parameters); 1 for fullrank.
        stochastic_entries: entries with a KL term (the factor entries, plus the m bias entries when the bias
            is Bayesian, as in lowrank and fullrank).
        kl: Σ over those entries of KL(N(μ, σ²) ‖ prior), nats, by quadrature in float64.
        kl_error: Σ over entries of |KL(points) − KL(points // 4)|, nats: the quadrature error stated.
        singular_values: σ_1 ≥ … ≥ σ_min(m,n) of the twin's weight W*; None without a twin.
        rank_bias: σ_{>r} = sqrt(Σ_{i>r} σ_i²) with r the layer's rank (min(m, n) when it has none, so 0).
        retained_energy: Σ_{i≤r} σ_i² / Σ_i σ_i².
        learning_error: ‖μ_A μ_Bᵀ − W*_r‖_F, W*_r the rank-r truncation of W* (lowrank with a twin only).
    """

    index: int
    shape: tuple[int, int]
    rank: int | None
    factor_parameters: int
    dense_parameters: int
    complexity_ratio: float
    stochastic_entries: int
    kl: float
    kl_error: float
    singular_values: tuple[float, ...] | None = None
    rank_bias: float | None = None
    retained_energy: float | None = None
    learning_error: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["shape"] = list(self.shape)
        out["singular_values"] = None if self.singular_values is None else list(self.singular_values)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerBound:
        """Inverse of :meth:`as_dict` (the model card reads the stored metrics)."""
        values = dict(data)
        values["shape"] = tuple(values["shape"])
        if values.get("singular_values") is not None:
            values["singular_values"] = tuple(values["singular_values"])
        return cls(**values)


@dataclass(frozen=True)
class BoundReport:
    """The McAllester bound of one checkpoint on its training split, with every term it is made of.

    Attributes:
        model, kind: the checkpoint's name and layer kind.
        prior: the prior on every stochastic entry, in words.
        rows: N, training rows (the sample the bound is about).
        delta: δ; the bound holds with probability ≥ 1 − δ.
        samples, seed: the posterior samples (and their generator's seed) behind the Gibbs risk.
        points: quadrature nodes per entry for the KL.
        layers: per-layer terms, input layer first.
        kl: Σ over layers of their KL, nats.
        kl_error: Σ over layers of their stated quadrature error, nats.
        gibbs_risk: L̂, mean over the S samples of each sample's 0–1 error rate on the training split.
        gibbs_risk_std_error: Monte Carlo standard error of L̂ (std of the per-sample rates / √S).
        majority_error: the 0–1 error of always predicting the training split's most frequent class.
        confidence_term: ln(2√N/δ).
        complexity: sqrt((KL + ln(2√N/δ)) / (2N)).
        bound: L̂ + complexity, the McAllester bound on the Gibbs classifier's expected 0–1 risk.
        vacuous: bound ≥ 1, which any classifier satisfies.
        kl_max: 2N(1 − L̂)² − ln(2√N/δ), the largest KL at which the bound stays below 1 (negative: none).
        twin: the deterministic twin's folder, None without one.
        caveat: why the figure is not a full PAC-Bayes bound for this kind, None when it is.
    """

    model: str
    kind: str
    prior: str
    rows: int
    delta: float
    samples: int
    seed: int
    points: int
    layers: tuple[LayerBound, ...]
    kl: float
    kl_error: float
    gibbs_risk: float
    gibbs_risk_std_error: float
    majority_error: float
    confidence_term: float
    complexity: float
    bound: float
    vacuous: bool
    kl_max: float
    twin: str | None = None
    caveat: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: nested layers as dicts, tuples as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["layers"] = [layer.as_dict() for layer in self.layers]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoundReport:
        """Inverse of :meth:`as_dict`."""
        values = dict(data)
        values["layers"] = tuple(LayerBound.from_dict(layer) for layer in values["layers"])
        return cls(**values)

    @property
    def has_twin(self) -> bool:
        return any(layer.rank_bias is not None for layer in self.layers)


def mcallester_bound(gibbs_risk: float, kl: float, rows: int, delta: float) -> tuple[float, float, float]:
    """(ln(2√N/δ), complexity sqrt((KL + ln(2√N/δ)) / (2N)), bound L̂ + complexity) for N = ``rows``."""
    confidence = math.log(2.0 * math.sqrt(rows) / delta)
    complexity = math.sqrt((kl + confidence) / (2.0 * rows))
    return confidence, complexity, gibbs_risk + complexity


def describe_prior(prior: PriorSpec) -> str:
    """The prior on one entry, in words, e.g. ``0.5·N(0, 1²) + 0.5·N(0, 0.002479²)``."""
    if prior.kind is PriorKind.MIXTURE:
        return f"{prior.pi:g}·N(0, {prior.sigma1:.4g}²) + {1 - prior.pi:g}·N(0, {prior.sigma2:.4g}²)"
    return f"N(0, {prior.sigma:.4g}²)"


def _stochastic_blocks(layer: torch.nn.Module) -> list[MeanFieldGaussian]:
    """The mean-field blocks whose KL the layer's ``kl`` sums (A, B, bias; W, bias; or r, s)."""
    return [child for child in layer.children() if isinstance(child, MeanFieldGaussian)]


def layer_kl(layer: torch.nn.Module, points: int) -> tuple[float, float, int]:
    """(Σ KL over the layer's stochastic entries, Σ |KL(points) − KL(points // 4)|, entries), in float64.

    The prior applies to θ − prior_offset, as :meth:`MeanFieldGaussian.kl` does (rank1's scales sit at 1).
    """
    total, error, entries = 0.0, 0.0, 0
    prior = layer.prior  # type: ignore[attr-defined]
    for block in _stochastic_blocks(layer):
        mu = (block.mu.detach().double() - block.prior_offset).flatten()  # (E,)
        sigma = BF.sigma_from_rho(block.rho.detach().double()).flatten()  # (E,)
        entries += mu.numel()
        for mu_part, sigma_part in zip(mu.split(KL_CHUNK_ENTRIES), sigma.split(KL_CHUNK_ENTRIES), strict=True):
            fine = kl_quadrature(mu_part, sigma_part, prior, points)
            coarse = kl_quadrature(mu_part, sigma_part, prior, points // 4)
            total += float(fine.sum())
            error += float((fine - coarse).abs().sum())
    return total, error, entries


def spectrum_terms(
    twin_weight: Tensor, rank: int | None, mean_weight: Tensor | None = None
) -> tuple[tuple[float, ...], float, float, float | None]:
    """Eckart–Young terms of a twin's weight W*: (m, n) at rank r (None: full, min(m, n)).

    Returns (singular values, σ_{>r}, retained energy Σ_{i≤r} σ_i² / Σ σ_i², ‖mean_weight − W*_r‖_F or None).
    """
    weight = twin_weight.detach().double().cpu()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)  # s: (min(m, n),)
    r = min(weight.shape) if rank is None else rank
    energy = s.square()
    total_energy = float(energy.sum())
    rank_bias = float(energy[r:].sum().sqrt())
    retained = float(energy[:r].sum()) / total_energy if total_energy > 0 else 1.0
    learning_error = None
    if mean_weight is not None:
        truncated = (u[:, :r] * s[:r]) @ vh[:r]  # W*_r: (m, n)
        learning_error = float(torch.linalg.matrix_norm(mean_weight.detach().double().cpu() - truncated))
    return tuple(float(v) for v in s), rank_bias, retained, learning_error


def _layer_bound(index: int, layer: torch.nn.Module, points: int, twin_weight: Tensor | None) -> LayerBound:
    m, n = layer.out_features, layer.in_features  # type: ignore[attr-defined]
    rank = layer.rank if isinstance(layer, LowRankBayesLinear) else None
    if rank is not None:
        factor_parameters = rank * (m + n)
    elif isinstance(layer, Rank1BayesLinear):
        factor_parameters = m + n
    else:
        factor_parameters = m * n
    kl, kl_error, entries = layer_kl(layer, points)
    twin_terms: dict[str, Any] = {}
    if twin_weight is not None:
        mean_weight = layer.mean_weight() if isinstance(layer, LowRankBayesLinear) else None
        values, rank_bias, retained, learning_error = spectrum_terms(twin_weight, rank, mean_weight)
        twin_terms = {
            "singular_values": values,
            "rank_bias": rank_bias,
            "retained_energy": retained,
            "learning_error": learning_error,
        }
    return LayerBound(
        index=index,
        shape=(m, n),
        rank=rank,
        factor_parameters=factor_parameters,
        dense_parameters=m * n,
        complexity_ratio=math.sqrt(factor_parameters / (m * n)),
        stochastic_entries=entries,
        kl=kl,
        kl_error=kl_error,
        **twin_terms,
    )


def _twin_weights(checkpoint: Checkpoint, twin: Checkpoint) -> list[Tensor]:
    """The twin's W*: (m, n) per layer, after checking it is a deterministic network of the same layers."""
    spec = twin.model.spec
    if spec.kind is not LayerKind.DETERMINISTIC:
        raise BoundError(f"{twin.path}: the twin must be a 'deterministic' checkpoint, not '{spec.kind.value}'")
    shapes, twin_shapes = checkpoint.model.spec.layer_shapes(), spec.layer_shapes()
    if twin_shapes != shapes:
        raise BoundError(f"{twin.path}: the twin's layers (in, out) {twin_shapes} differ from the model's {shapes}")
    # Same widths but other input columns would compare weights that read different features.
    inputs, twin_inputs = checkpoint.manifest.preprocessing.output_names, twin.manifest.preprocessing.output_names
    if twin_inputs != inputs:
        raise BoundError(f"{twin.path}: the twin's input columns {twin_inputs} differ from the model's {inputs}")
    return [layer.weight.detach()[0] for layer in twin.model.layers]  # weight (1, m, n) -> (m, n)


@torch.no_grad()
def sample_error_rates(model: BayesianMLP, x: Tensor, y: Tensor, samples: int, seed: int) -> Tensor:
    """Per-sample 0–1 error rates: x: (N, d), y: (N,) -> (S,) float64.

    The S weight samples are drawn once from a CPU generator seeded with ``seed`` (the draws of
    :func:`app.bnn.predictive.predict`) and shared by every row block; a sample's prediction is the argmax of
    its class probabilities.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = model.sample(model.num_samples(samples), generator)
    wrong = torch.zeros(model.num_samples(samples), dtype=torch.float64)
    for x_part, y_part in zip(x.split(RISK_CHUNK_ROWS), y.split(RISK_CHUNK_ROWS), strict=True):
        predicted = predict_with(model, x_part, weights).probs.argmax(-1)  # (S, rows)
        wrong += (predicted != y_part).sum(1).double()
    return wrong / x.shape[0]


def _on_cpu(model: BayesianMLP) -> BayesianMLP:
    # A copy, so a model a server or trainer holds on an accelerator stays where it is.
    if next(model.parameters()).device.type == "cpu":
        return model
    return copy.deepcopy(model).to("cpu")


def bound_report(
    checkpoint: Checkpoint,
    dataset: TabularDataset,
    twin: Checkpoint | None = None,
    delta: float = 0.05,
    samples: int = 256,
    seed: int = 0,
    points: int = 512,
    on_step: Callable[[str], None] | None = None,
) -> BoundReport:
    """The McAllester bound of ``checkpoint`` on ``dataset``'s training split, with every term.

    Args:
        checkpoint: a lowrank, fullrank or rank1 checkpoint (point-estimate kinds have no posterior over
            weights and are refused with :class:`BoundError`).
        dataset: the data set it was trained on; its train split (N rows) is the bound's sample.
        twin: a trained deterministic checkpoint with the same layers, for the rank bias per layer.
        delta: δ in (0, 1).
        samples: S posterior samples for the Gibbs risk.
        seed: seed of the samples' generator.
        points: quadrature nodes per entry (≥ 8); the error is stated against points // 4.
        on_step: hears a description of each long step as it starts (progress only).
    """
    kind = checkpoint.model.spec.kind
    if kind not in BAYESIAN_KINDS:
        valid = ", ".join(sorted(k.value for k in BAYESIAN_KINDS))
        raise BoundError(
            f"'{kind.value}' is a point-estimate kind: it has no posterior over weights for a PAC-Bayes bound "
            f"(kinds with one: {valid})"
        )
    if not 0.0 < delta < 1.0:
        raise BoundError(f"delta must be in (0, 1), got {delta}")
    if samples < 1:
        raise BoundError(f"samples must be ≥ 1, got {samples}")
    if points < MIN_POINTS:
        raise BoundError(f"points must be ≥ {MIN_POINTS}, got {points}")
    labels = np.asarray(dataset.train.y)
    if labels.size == 0 or (labels < 0).any():
        raise BoundError("the training split needs at least one row and a known label on every row")

    def step(text: str) -> None:
        if on_step is not None:
            on_step(f"PAC-Bayes bound: {text}")

    model = _on_cpu(checkpoint.model)
    twin_weights = _twin_weights(checkpoint, twin) if twin is not None else [None] * len(model.layers)
    bounds = []
    for i, (layer, w) in enumerate(zip(model.layers, twin_weights, strict=True)):
        step(f"KL of layer {i + 1} of {len(model.layers)} by quadrature ({points} nodes)")
        bounds.append(_layer_bound(i, layer, points, w))
    layers = tuple(bounds)

    dtype = next(model.parameters()).dtype
    x = torch.as_tensor(checkpoint.manifest.preprocessing.transform(dataset.train.frame), dtype=dtype)  # (N, d)
    y = torch.as_tensor(labels, dtype=torch.int64)  # (N,)
    step(f"Gibbs risk of {model.num_samples(samples)} samples on {labels.size:,} training rows")
    rates = sample_error_rates(model, x, y, samples, seed)  # (S,)
    gibbs_risk = float(rates.mean())
    std_error = float(rates.std(correction=1)) / math.sqrt(rates.numel()) if rates.numel() > 1 else 0.0

    rows = int(labels.size)
    kl = sum(layer.kl for layer in layers)
    confidence, complexity, bound = mcallester_bound(gibbs_risk, kl, rows, delta)
    return BoundReport(
        model=checkpoint.manifest.name,
        kind=kind.value,
        prior=describe_prior(model.spec.prior),
        rows=rows,
        delta=delta,
        samples=int(rates.numel()),
        seed=seed,
        points=points,
        layers=layers,
        kl=kl,
        kl_error=sum(layer.kl_error for layer in layers),
        gibbs_risk=gibbs_risk,
        gibbs_risk_std_error=std_error,
        majority_error=1.0 - float(np.bincount(labels).max()) / rows,
        confidence_term=confidence,
        complexity=complexity,
        bound=bound,
        vacuous=bound >= 1.0,
        kl_max=2.0 * rows * (1.0 - gibbs_risk) ** 2 - confidence,
        twin=None if twin is None else str(twin.path),
        caveat=RANK1_CAVEAT if kind is LayerKind.RANK1 else None,
    )
