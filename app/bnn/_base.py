"""The skeleton every layer kind shares: draw S weight samples, push rows through them, report the KL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from app.bnn.init import InitSpec
from app.bnn.priors import PriorSpec

# -- weight samples: what ``sample`` returns and ``propagate`` takes, one type per layer kind -------------------
# NamedTuples, so a draw also unpacks positionally in field order (the engine's fused paths do).


class LowRankSample(NamedTuple):
    """S low-rank weight samples W_s = A_s B_sᵀ: a (S, m, r), b (S, n, r), bias (S, m)."""

    a: Tensor
    b: Tensor
    bias: Tensor


class DenseSample(NamedTuple):
    """One dense weight matrix per sample: weight (S, m, n), bias (S, m) (S = M members for point estimates)."""

    weight: Tensor
    bias: Tensor


class Rank1Sample(NamedTuple):
    """S rank-1 multiplicative factors r sᵀ: scale_out r (S, m), scale_in s (S, n)."""

    scale_out: Tensor
    scale_in: Tensor


class DropoutSample(NamedTuple):
    """S input keep masks scaled by 1/(1 − p): mask (S, n); None when p = 0 (dropout off)."""

    mask: Tensor | None


LayerSample = LowRankSample | DenseSample | Rank1Sample | DropoutSample

# -- standard noise: what ``draw_noise`` returns and ``sample_from_noise`` takes (fields follow ``noise_specs``) --


class LowRankNoise(NamedTuple):
    """Standard normals for A (S, m, r), B (S, n, r) and the bias (S, m)."""

    a: Tensor
    b: Tensor
    bias: Tensor


class DenseNoise(NamedTuple):
    """Standard normals for the weight (S, m, n) and the bias (S, m)."""

    weight: Tensor
    bias: Tensor


class Rank1Noise(NamedTuple):
    """Standard normals for r (S, m) and s (S, n)."""

    scale_out: Tensor
    scale_in: Tensor


class DropoutNoise(NamedTuple):
    """U[0, 1) entries (S, n), one per input unit and sample; a unit is kept where uniform ≥ p."""

    uniform: Tensor


class NoNoise(NamedTuple):
    """No noise: point estimates, and dropout with p = 0."""


LayerNoise = LowRankNoise | DenseNoise | Rank1Noise | DropoutNoise | NoNoise


def slice_draw(weights: Any, start: int, stop: int) -> Any:
    """Samples [start, stop) of every tensor of a network's draw (nested NamedTuples and lists of tensors); a
    point-estimate map's single weight (leading size 1) is kept whole, None (dropout off) stays None."""
    if isinstance(weights, Tensor):
        return weights if weights.shape[0] == 1 else weights[start:stop]
    if isinstance(weights, list):
        return [slice_draw(w, start, stop) for w in weights]
    if isinstance(weights, tuple):
        return type(weights)._make(slice_draw(w, start, stop) for w in weights)  # type: ignore[attr-defined]
    return weights


def place(out: Tensor | None, part: Tensor, start: int, rows: int) -> Tensor:
    """Write a block's outputs (S, n, ...) at rows [start, start + n) of one (S, rows, ...) tensor, allocated at
    the first block. A list of small live outputs between the blocks' large short-lived activations pinned the
    heap instead: it grew to 15 GB scoring 9,139 sequences (a full-rank LSTM at S = 150); this stays flat. (The
    MLP engine fills its one buffer the same way.)"""
    if out is None:
        out = part.new_empty((part.shape[0], rows, *part.shape[2:]))
    out[:, start : start + part.shape[1]] = part
    return out


@dataclass(frozen=True)
class NoiseSpec:
    """One block of standard noise a weight sample is a deterministic function of: (S, *shape) per draw.

    ``normal``: N(0, 1) entries; ``uniform``: U[0, 1) entries. Exporters use these to declare the noise inputs
    of a sampling graph; ``draw_noise`` draws them in this order.
    """

    shape: tuple[int, ...]
    distribution: Literal["normal", "uniform"] = "normal"


class _StochasticLinear(nn.Module):
    """Base of all linear layer kinds (as ``_ConvNd`` is for convolutions).

    Subclasses implement ``noise_specs`` and ``sample_from_noise`` (a weight sample as a function of standard
    noise), ``propagate`` (rows through given draws) and, when Bayesian, ``kl``. Splitting draw from use lets a
    network draw once and reuse the draws over row chunks, so every row of a request sees the same S weight
    samples; splitting noise from transform lets a graph take the noise as an input (the ONNX sampling graph).

    Attributes:
        fixed_samples: members of the predictive for kinds whose sample set is fixed (deterministic: 1,
            ensemble: M); None when any S can be drawn.
        noise_type: the NamedTuple :meth:`draw_noise` returns, one field per :meth:`noise_specs` entry.
    """

    fixed_samples: int | None = None
    noise_type: ClassVar[type[LayerNoise]] = NoNoise

    def __init__(self, in_features: int, out_features: int, prior: PriorSpec, init: InitSpec) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be ≥ 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.prior = prior.build()
        self.init = init

    def noise_specs(self) -> list[NoiseSpec]:
        """The standard noise one weight sample needs, in draw order; none for point estimates."""
        return []

    def draw_noise(self, samples: int, generator: torch.Generator | None = None) -> LayerNoise:
        """Standard noise for ``samples`` weight samples: one (S, *shape) tensor per :meth:`noise_specs` entry,
        drawn in that order, as a :attr:`noise_type`."""
        like = next(self.parameters())
        factory = {"generator": generator, "device": like.device, "dtype": like.dtype}
        return self.noise_type._make(
            torch.randn((samples, *spec.shape), **factory)
            if spec.distribution == "normal"
            else torch.rand((samples, *spec.shape), **factory)
            for spec in self.noise_specs()
        )

    def sample_from_noise(self, noise: LayerNoise) -> LayerSample:
        """Weight samples (tensors with a leading S dimension) as a deterministic function of ``noise``."""
        raise NotImplementedError

    def sample(self, samples: int, generator: torch.Generator | None = None) -> LayerSample:
        """Draw ``samples`` weight samples (tensors with a leading S dimension)."""
        self._check_samples(samples)
        return self.sample_from_noise(self.draw_noise(samples, generator))

    def propagate(self, x: Tensor, weights: LayerSample) -> Tensor:
        """x: (S or 1, N, n) -> (S, N, m) through drawn ``weights``."""
        raise NotImplementedError

    def lookup(self, ids: Tensor, weights: LayerSample) -> Tensor:
        """ids: (N, L) integers in [0, n) -> (S, N, L, m): the layer applied to one-hot inputs, i.e. an embedding
        table whose row for id t is column t of W (plus the bias). This generic form builds the one-hot rows;
        the kinds override it with a gather."""
        one_hot = torch.nn.functional.one_hot(ids.reshape(-1), self.in_features).to(next(self.parameters()).dtype)
        out = self.propagate(one_hot.unsqueeze(0), weights)
        return out.reshape(out.shape[0], *ids.shape, self.out_features)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x: (S, N, n) -> (S, N, m), one fresh weight sample per leading index."""
        return self.propagate(x, self.sample(x.shape[0], generator))

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        """KL(q ‖ prior) summed over the layer's stochastic parameters; 0 for point estimates."""
        return torch.zeros((), device=next(self.parameters()).device)

    def _check_samples(self, samples: int) -> None:
        if samples < 1:
            raise ValueError(f"samples must be ≥ 1, got {samples}")
        if self.fixed_samples is not None and samples != self.fixed_samples:
            raise ValueError(f"{type(self).__name__} has exactly {self.fixed_samples} samples, got {samples}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
