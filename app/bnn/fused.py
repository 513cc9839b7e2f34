"""The fused low-rank paths of the Monte Carlo engine: rows × samples through the factors, no loop over samples.

Row-major for small N (the first layer one GEMM against every sample's B); feature-major for large N
(activations (S, m, N), so every GEMM has the long N dimension last, chunked over samples to stay in cache).
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.bnn._base import LowRankSample
from app.bnn.network import BayesianMLP

ROW_MAJOR_MAX_ROWS = 16  # measured crossover between the two low-rank layouts on 2 CPU cores
# Feature-major path: samples per chunk so one (chunk, width, N) activation holds about this many floats
# (8 MiB: well inside a 32 MiB L3; 16 samples for the bundled model at N = 1024, measured best).
FEATURE_MAJOR_CHUNK_FLOATS = 1 << 21


def slice_samples(weights: list | None, start: int, stop: int) -> list | None:
    """Samples [start, stop) of every tensor of a draw (weights or their augmented form)."""
    if weights is None:
        return None
    # A typed draw (LowRankSample, …) stays typed; the feature-major layout is plain tuples.
    return [
        (getattr(type(layer), "_make", tuple))(None if t is None else t[start:stop] for t in layer) for layer in weights
    ]


def lowrank_row_major(x: Tensor, weights: list[LowRankSample], model: BayesianMLP) -> Tensor:
    """Small N: x: (N, n) -> logits (S, N, k); the first layer is one GEMM against all samples' B at once."""
    last = len(weights) - 1
    h: Tensor | None = None
    for i, (a, b, c) in enumerate(weights):
        if i == 0:
            samples, n, r = b.shape
            xb = x @ b.permute(1, 0, 2).reshape(n, samples * r)  # (N, S·r): one GEMM for every sample
            hidden = xb.reshape(x.shape[0], samples, r).transpose(0, 1)  # (S, N, r)
        else:
            hidden = torch.bmm(h, b)  # type: ignore[arg-type]
        h = torch.baddbmm(c.unsqueeze(1), hidden, a.transpose(1, 2))  # (S, N, m)
        if i < last:
            h = activate(h, model)
    return h  # type: ignore[return-value]


def feature_major(weights: list[LowRankSample]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """A low-rank draw in the feature-major path's layout, per layer: Bᵀ (S, r, n), A (S, m, r), c (S, m, 1),
    all contiguous (the bank keeps this form, so a call copies nothing)."""
    return [(b.transpose(1, 2).contiguous(), a.contiguous(), c.unsqueeze(2).contiguous()) for a, b, c in weights]


def lowrank_feature_major(
    x: Tensor, layout: list[tuple[Tensor, Tensor, Tensor]], sample_chunk: int, model: BayesianMLP
) -> Tensor:
    """Large N: activations kept as (S, m, N) so every GEMM has the long N dimension last, ``sample_chunk``
    samples at a time so that they stay in cache. x: (N, n) -> logits (S, N, k)."""
    (first_bt, first_a, first_c), rest = layout[0], layout[1:]
    samples, rank, n = first_bt.shape
    rows = x.shape[0]
    xb = (first_bt.reshape(samples * rank, n) @ x.T).reshape(samples, rank, rows)  # (S, r, N): one GEMM
    last = len(rest) - 1
    outputs = []
    for start in range(0, samples, sample_chunk):
        part = slice(start, start + sample_chunk)
        h = torch.baddbmm(first_c[part], first_a[part], xb[part])  # (s, m, N)
        if rest:
            h = activate(h, model)
        for i, (bt, a, c) in enumerate(rest):
            h = torch.baddbmm(c[part], a[part], torch.bmm(bt[part], h))
            if i < last:
                h = activate(h, model)
        outputs.append(h)
    return torch.cat(outputs).transpose(1, 2)  # (S, N, k)


def activate(h: Tensor, model: BayesianMLP) -> Tensor:
    return h.relu_() if model.spec.activation.value == "relu" else model.activation(h)
