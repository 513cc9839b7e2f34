"""Bayesian LSTMs: every layer's input and recurrent maps (the four gates packed) are stochastic linear layers.

The paper's recurrent model: both the input-to-hidden and the hidden-to-hidden matrix of each layer are low
rank (W = A·Bᵀ, the same posterior, priors, initialisation and KL as the dense layer), and a weight sample is
drawn once per sequence and reused at every time step. Any layer kind works through the same interface:
full-rank BBB, rank-1, deterministic, ensembles, and MC dropout (its masks then drop the same input and hidden
units at every step, variational RNN dropout). All S samples run at once: the time loop is the only loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from app.bnn._base import LayerSample, _StochasticLinear
from app.bnn.network import _build_layer
from app.bnn.spec import BAYESIAN_KINDS, SequenceNetworkSpec


class LSTMLayerSample(NamedTuple):
    """S weight samples of one LSTM layer: its input map's and its recurrent map's."""

    input: LayerSample
    recurrent: LayerSample


class SequenceSample(NamedTuple):
    """S weight samples of a whole recurrent network: per LSTM layer, then the head's."""

    layers: list[LSTMLayerSample]
    head: LayerSample


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """lengths: (N,) valid steps per row (1 ≤ length ≤ T) -> (T, N, 1) bool, True where step t < length."""
    return (torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)


class BayesianLSTMLayer(nn.Module):
    """One LSTM layer, gates = x_t W_ihᵀ + h_{t−1} W_hhᵀ + b_ih + b_hh, packed (i, f, g, o) as ``nn.LSTM``:
    c_t = σ(f)·c_{t−1} + σ(i)·tanh(g), h_t = σ(o)·tanh(c_t). W_ih and W_hh are stochastic linear layers.

    Args:
        input_map: n → 4H.
        recurrent_map: H → 4H.

    Shape:
        x: (S or 1, N, T, n), mask (T, N, 1) or None -> h: (S, N, T, H); past a row's length its state is held.
    """

    def __init__(self, input_map: _StochasticLinear, recurrent_map: _StochasticLinear) -> None:
        super().__init__()
        if input_map.out_features != recurrent_map.out_features or recurrent_map.out_features % 4:
            raise ValueError("both maps must give the 4 packed gates of one hidden size")
        if recurrent_map.in_features * 4 != recurrent_map.out_features:
            raise ValueError(f"the recurrent map must be H → 4H, got {recurrent_map.in_features} → 4H")
        self.input_map = input_map
        self.recurrent_map = recurrent_map
        self.hidden = recurrent_map.in_features

    def sample(self, samples: int, generator: torch.Generator | None = None) -> LSTMLayerSample:
        return LSTMLayerSample(self.input_map.sample(samples, generator), self.recurrent_map.sample(samples, generator))

    def propagate(self, x: Tensor, weights: LSTMLayerSample, mask: Tensor | None = None) -> Tensor:
        rows, steps = x.shape[1], x.shape[2]
        # Every step's input projection in one pass: (S, N·T, 4H).
        gates_in = self.input_map.propagate(x.reshape(x.shape[0], rows * steps, -1), weights.input)
        samples = gates_in.shape[0]
        gates_in = gates_in.reshape(samples, rows, steps, -1)
        h = gates_in.new_zeros(samples, rows, self.hidden)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(steps):
            gates = gates_in[:, :, t] + self.recurrent_map.propagate(h, weights.recurrent)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_next = torch.sigmoid(o) * torch.tanh(c_next)
            if mask is not None:  # rows already ended keep their last state
                c_next, h_next = torch.where(mask[t], c_next, c), torch.where(mask[t], h_next, h)
            c, h = c_next, h_next
            outputs.append(h)
        return torch.stack(outputs, dim=2)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        return self.input_map.kl(generator) + self.recurrent_map.kl(generator)


class BayesianLSTM(nn.Module):
    """Stacked Bayesian LSTM layers and a head on each row's last valid state, one layer kind throughout.

    Args:
        spec: the architecture (``SequenceNetworkSpec``).
        generator: source of the initial values.

    Shape:
        x: (N, T, n), lengths (N,) or None (all T) -> head outputs (S, N, k): logits, or for a gaussian
        likelihood a mean and a raw scale per target (``app.bnn.regression``).
    """

    def __init__(
        self,
        spec: SequenceNetworkSpec,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        factory: dict[str, object] = {"generator": generator, "device": device, "dtype": dtype}
        maps = [
            _build_layer(spec, i, n, m, rank, factory)
            for i, ((n, m), rank) in enumerate(zip(spec.map_shapes(), spec.map_ranks(), strict=True))
        ]
        self.layers = nn.ModuleList(BayesianLSTMLayer(maps[2 * i], maps[2 * i + 1]) for i in range(spec.layers))
        self.head = maps[-1]

    @property
    def fixed_samples(self) -> int | None:
        """1 for a point estimate, M for an ensemble; None when every sample is a fresh weight draw."""
        return self.head.fixed_samples

    def num_samples(self, requested: int) -> int:
        fixed = self.fixed_samples
        return fixed if fixed is not None else requested

    def sample(self, samples: int, generator: torch.Generator | None = None) -> SequenceSample:
        """Weight samples of every map, layer by layer then the head (reproducible for a seeded generator)."""
        return SequenceSample(
            [layer.sample(samples, generator) for layer in self.layers], self.head.sample(samples, generator)
        )

    def propagate(self, x: Tensor, weights: SequenceSample, lengths: Tensor | None = None) -> Tensor:
        """x: (N, T, n), lengths (N,) -> (S, N, k) through drawn ``weights``."""
        steps = x.shape[1]
        if lengths is not None and not bool(((lengths >= 1) & (lengths <= steps)).all()):
            raise ValueError(f"lengths must be in [1, {steps}]")
        mask = None if lengths is None else step_mask(lengths, steps)
        h = x.unsqueeze(0)  # (1, N, T, n): the input is shared by every sample
        for layer, w in zip(self.layers, weights.layers, strict=True):
            h = layer.propagate(h, w, mask)
        last = h[:, :, -1]  # held past each row's length: the last valid state
        return self.head.propagate(last, weights.head)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """x: (N, T, n) -> (S, N, k) with S = ``num_samples(samples)`` fresh weight samples."""
        return self.propagate(x, self.sample(self.num_samples(samples), generator), lengths)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        """Σ over every map of KL(q ‖ prior); 0 for point estimates."""
        return torch.stack([*(layer.kl(generator) for layer in self.layers), self.head.kl(generator)]).sum()

    @property
    def is_bayesian(self) -> bool:
        return self.spec.kind in BAYESIAN_KINDS
