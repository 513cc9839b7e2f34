"""A Bayesian Transformer encoder for short texts: its token embedding, attention and feed-forward maps are
stochastic linear layers, all S weight samples evaluated in one batched pass.

The paper's text model makes the token embedding, Q, K, V and the feed-forward matrices low rank (W = A·Bᵀ,
the same posterior, priors, initialisation and KL as the dense layer); which parts are Bayesian is the spec's
``bayesian``. A weight sample is drawn once per call and shared by every token and row. Positions and
LayerNorms are point estimates (an ensemble has its own per member). Padded positions are masked out of every
key, so a row's outputs do not depend on how far its batch pads it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.bnn._base import DropoutSample, LayerSample, _StochasticLinear, slice_draw
from app.bnn.network import _ACTIVATIONS, _build_layer
from app.bnn.pointestimate import DeterministicLinear, MCDropoutLinear
from app.bnn.spec import BAYESIAN_KINDS, TEXT_LAYER_MAPS, LayerKind, TextNetworkSpec

POSITION_STD = 0.02  # learned positions start small: the token embedding carries the signal at first


class NormSample(NamedTuple):
    """A LayerNorm's affine, one per member: weight and bias (M, 1, 1, d), M = 1 unless an ensemble."""

    weight: Tensor
    bias: Tensor


class EncoderLayerSample(NamedTuple):
    """S weight samples of one encoder block's maps, in ``TEXT_LAYER_MAPS`` order, then its norms."""

    query: LayerSample
    key: LayerSample
    value: LayerSample
    attention_output: LayerSample
    feedforward_in: LayerSample
    feedforward_out: LayerSample
    attention_norm: NormSample
    feedforward_norm: NormSample


class TransformerSample(NamedTuple):
    """S weight samples of a whole encoder: the embedding's, the positions (M, 1, L, d), per block, the final
    norm, then the head's. The point estimates are in the draw too, so that samples [s, s + 1) of an ensemble's
    draw are member s whole."""

    embedding: LayerSample
    positions: Tensor
    layers: list[EncoderLayerSample]
    final_norm: NormSample
    head: LayerSample


def key_mask(lengths: Tensor, positions: int) -> Tensor:
    """lengths: (N,) valid tokens per row (1 ≤ length ≤ L) -> (N, 1, 1, L) bool, True at padded positions."""
    return (torch.arange(positions, device=lengths.device) >= lengths.unsqueeze(1))[:, None, None, :]


def apply_map(layer: _StochasticLinear, h: Tensor, weights: LayerSample) -> Tensor:
    """h: (S or 1, N, L, n) -> (S', N, L, m) through one map; the maps take (S, rows, n), so N·L are rows."""
    out = layer.propagate(h.reshape(h.shape[0], -1, h.shape[-1]), weights)
    return out.reshape(out.shape[0], *h.shape[1:-1], out.shape[-1])


def sample_map(layer: _StochasticLinear, samples: int, generator: torch.Generator | None) -> LayerSample:
    """``samples`` draws of a stochastic map, the members of a fixed one (1 for a point estimate)."""
    return layer.sample(layer.fixed_samples or samples, generator)


class MemberLayerNorm(nn.Module):
    """LayerNorm with one affine per ensemble member (M = 1 otherwise): h (S, N, L, d) with S = M or 1."""

    def __init__(
        self,
        members: int,
        features: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones((members, 1, 1, features), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros((members, 1, 1, features), device=device, dtype=dtype))

    def sample(self) -> NormSample:
        return NormSample(self.weight, self.bias)

    @staticmethod
    def propagate(h: Tensor, weights: NormSample) -> Tensor:
        if weights.weight.shape[0] == 1:  # one affine: layer_norm applies it in the same kernel (two ops fewer)
            return F.layer_norm(h, h.shape[-1:], weights.weight.reshape(-1), weights.bias.reshape(-1))
        return F.layer_norm(h, h.shape[-1:]) * weights.weight + weights.bias


class BayesianEncoderLayer(nn.Module):
    """One pre-norm block: h + Attn(LN(h)), then + FFN(LN(·)), FFN = out(act(in(·))).

    Attention: q, k, v (S, N, L, d) split into ``heads`` of d/heads; softmax(q kᵀ/√(d/heads)) over the
    unmasked keys. With ``first_only`` the block computes position 0 only (the last block: the head reads
    the CLS position alone, so the other queries and their feed-forward passes are never needed).

    Shape:
        h: (S or 1, N, L, d), mask (N, 1, 1, L) -> (S, N, L, d), or (S, N, 1, d) with ``first_only``
    """

    def __init__(
        self,
        maps: dict[str, _StochasticLinear],
        heads: int,
        activation: nn.Module,
        members: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.maps = nn.ModuleDict(maps)
        self.heads = heads
        self.activation = activation
        d = maps["query"].in_features
        self.attention_norm = MemberLayerNorm(members, d, device, dtype)
        self.feedforward_norm = MemberLayerNorm(members, d, device, dtype)

    def sample(self, samples: int, generator: torch.Generator | None = None) -> EncoderLayerSample:
        """Every map's draws; a point-estimate map gives its one weight (broadcast over the S samples)."""
        maps = (sample_map(self.maps[name], samples, generator) for name, _ in TEXT_LAYER_MAPS)
        return EncoderLayerSample(*maps, self.attention_norm.sample(), self.feedforward_norm.sample())

    def _split(self, x: Tensor) -> Tensor:
        """(S, N, L, d) -> (S, N, heads, L, d/heads)."""
        return x.reshape(*x.shape[:-1], self.heads, -1).transpose(-2, -3)

    def propagate(self, h: Tensor, weights: EncoderLayerSample, mask: Tensor, first_only: bool = False) -> Tensor:
        maps = self.maps
        x = MemberLayerNorm.propagate(h, weights.attention_norm)
        queries = x[:, :, :1] if first_only else x
        q = self._split(apply_map(maps["query"], queries, weights.query))
        k = self._split(apply_map(maps["key"], x, weights.key))
        v = self._split(apply_map(maps["value"], x, weights.value))
        # softmax(q kᵀ/√(d/heads)) v over the unmasked keys, as two batched matmuls broadcast over the samples: at
        # these head sizes (d/heads = 16, L ≤ 64) 1.9x faster on the CPU than the fused SDPA kernel (the full
        # block of one sentence at S = 64: 440 µs against 832 µs; bench/results/text-engine.md).
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (S, N, heads, Lq, L)
        scores = scores.masked_fill(mask.unsqueeze(0), float("-inf"))  # every text keeps ≥ 1 key: no row all -inf
        attended = torch.matmul(scores.softmax(-1), v).transpose(-2, -3).flatten(-2)  # (S, N, Lq, d)
        h = (h[:, :, :1] if first_only else h) + apply_map(maps["attention_output"], attended, weights.attention_output)
        x = MemberLayerNorm.propagate(h, weights.feedforward_norm)
        inner = self.activation(apply_map(maps["feedforward_in"], x, weights.feedforward_in))
        return h + apply_map(maps["feedforward_out"], inner, weights.feedforward_out)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.stack([layer.kl(generator) for layer in self.maps.values()]).sum()


def _build_map(
    spec: TextNetworkSpec, bayesian: bool, n: int, m: int, rank: int | None, factory: dict[str, object]
) -> _StochasticLinear:
    """A map of ``spec.kind`` when ``bayesian`` (MC dropout's rate applies to every such map: index 1), else a
    point estimate (an ensemble's maps are all of its kind, so its members stay independent)."""
    if bayesian:
        return _build_layer(spec, 1, n, m, rank, factory)  # type: ignore[arg-type]
    return DeterministicLinear(n, m, init=spec.init, **factory)  # type: ignore[arg-type]


class BayesianTransformer(nn.Module):
    """Token ids -> class logits through a pre-norm Transformer encoder of one layer kind.

    Args:
        spec: the architecture (``TextNetworkSpec``).
        generator: source of the initial values.

    Shape:
        ids: (N, L) token ids (position 0 the CLS token, L ≤ max_length), lengths (N,) or None (all L)
        -> logits (S, N, k)
    """

    def __init__(
        self,
        spec: TextNetworkSpec,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        factory: dict[str, object] = {"generator": generator, "device": device, "dtype": dtype}
        maps = [
            _build_map(spec, bayesian, n, m, rank, factory)
            for (n, m), rank, bayesian in zip(spec.map_shapes(), spec.map_ranks(), spec.map_is_bayesian(), strict=True)
        ]
        members = spec.members if spec.kind is LayerKind.ENSEMBLE else 1
        self.embedding = maps[0]
        self.positions = nn.Parameter(
            torch.empty((members, 1, spec.max_length, spec.d_model), device=device, dtype=dtype)
        )
        with torch.no_grad():
            self.positions.normal_(0.0, POSITION_STD, generator=generator)
        per_layer = len(TEXT_LAYER_MAPS)
        self.layers = nn.ModuleList(
            BayesianEncoderLayer(
                {name: maps[1 + i * per_layer + j] for j, (name, _) in enumerate(TEXT_LAYER_MAPS)},
                spec.heads,
                _ACTIVATIONS[spec.activation](),
                members,
                device,
                dtype,
            )
            for i in range(spec.layers)
        )
        self.final_norm = MemberLayerNorm(members, spec.d_model, device=device, dtype=dtype)
        self.head = maps[-1]

    @property
    def fixed_samples(self) -> int | None:
        """1 for a point estimate, M for an ensemble; None when every sample is a fresh weight draw."""
        if self.spec.kind is LayerKind.DETERMINISTIC:
            return 1
        return self.spec.members if self.spec.kind is LayerKind.ENSEMBLE else None

    def num_samples(self, requested: int) -> int:
        fixed = self.fixed_samples
        return fixed if fixed is not None else requested

    def sample(self, samples: int, generator: torch.Generator | None = None) -> TransformerSample:
        """Weight samples of every map: the embedding, block by block, then the head (reproducible for a seeded
        generator). A point-estimate map's draw is its single weight, broadcast over the S samples."""
        return TransformerSample(
            sample_map(self.embedding, samples, generator),
            self.positions,
            [layer.sample(samples, generator) for layer in self.layers],
            self.final_norm.sample(),
            sample_map(self.head, samples, generator),
        )

    def propagate(self, ids: Tensor, weights: TransformerSample, lengths: Tensor | None = None) -> Tensor:
        """ids: (N, L), lengths (N,) -> logits (S, N, k) through drawn ``weights``."""
        positions = ids.shape[1]
        if positions > self.spec.max_length:
            raise ValueError(f"sequences hold at most {self.spec.max_length} tokens, got {positions}")
        if lengths is None:
            lengths = torch.full((ids.shape[0],), positions, device=ids.device)
        elif not bool(((lengths >= 1) & (lengths <= positions)).all()):
            raise ValueError(f"lengths must be in [1, {positions}]")
        return self.logits(ids, weights, key_mask(lengths, positions))

    def _embed(self, ids: Tensor, weights: TransformerSample) -> Tensor:
        """ids: (N, L) -> (S', N, L, d): token embeddings plus positions."""
        return self.embedding.lookup(ids, weights.embedding) + weights.positions[:, :, : ids.shape[1]]

    def logits(self, ids: Tensor, weights: TransformerSample, mask: Tensor) -> Tensor:
        """ids: (N, L), mask (N, 1, 1, L) (``key_mask``) -> (S, N, k): ``propagate`` less its range checks, which
        the ONNX export cannot trace (app.checkpoint.onnx_text)."""
        h = self._embed(ids, weights)
        last = len(self.layers) - 1
        for i, (layer, w) in enumerate(zip(self.layers, weights.layers, strict=True)):
            h = layer.propagate(h, w, mask, first_only=i == last)
        cls = MemberLayerNorm.propagate(h, weights.final_norm)[:, :, 0]  # (S, N, d)
        return self.head.propagate(cls, weights.head)

    def pool(self, ids: Tensor, weights: TransformerSample, mask: Tensor) -> Tensor:
        """ids: (N, L), mask (N, 1, 1, L) -> (N, d): ``pooled_features`` through one given draw."""
        h = self._embed(ids, weights)
        for layer, w in zip(self.layers[:-1], weights.layers[:-1], strict=True):
            h = layer.propagate(h, w, mask)
        valid = (~mask[:, 0, 0, :]).to(h.dtype).unsqueeze(-1)  # (N, L, 1)
        return (h[0] * valid).sum(1) / valid.sum(1)

    def forward(
        self, ids: Tensor, lengths: Tensor | None = None, samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """ids: (N, L) -> (S, N, k) with S = ``num_samples(samples)`` fresh weight samples."""
        return self.propagate(ids, self.sample(self.num_samples(samples), generator), lengths)

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        """Σ over every map of KL(q ‖ prior); 0 for point estimates."""
        terms = [self.embedding.kl(generator), *(layer.kl(generator) for layer in self.layers), self.head.kl(generator)]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def mean_sample(self) -> TransformerSample:
        """One draw at the posterior mean: every Gaussian at its mean (zero noise), dropout off; an ensemble's
        first member (members' representation spaces are unrelated, so they are not averaged)."""
        if self.spec.kind is LayerKind.ENSEMBLE:
            return slice_draw(self.sample(self.spec.members), 0, 1)

        def at_mean(layer: _StochasticLinear) -> LayerSample:
            if isinstance(layer, MCDropoutLinear):
                return DropoutSample(None)
            like = self.positions
            zeros = (torch.zeros((1, *s.shape), device=like.device, dtype=like.dtype) for s in layer.noise_specs())
            return layer.sample_from_noise(layer.noise_type._make(zeros))

        layers = [
            EncoderLayerSample(
                *(at_mean(layer.maps[name]) for name, _ in TEXT_LAYER_MAPS),
                layer.attention_norm.sample(),
                layer.feedforward_norm.sample(),
            )
            for layer in self.layers
        ]
        return TransformerSample(
            at_mean(self.embedding), self.positions, layers, self.final_norm.sample(), at_mean(self.head)
        )

    @torch.no_grad()
    def pooled_features(self, ids: Tensor, lengths: Tensor, weights: TransformerSample | None = None) -> Tensor:
        """ids: (N, L), lengths (N,) -> (N, d): the input of the last block (the encoder's representation after
        all but one block; the embeddings for a one-block encoder), averaged over each text's valid positions,
        under ``weights`` (one draw; the posterior mean by default). The gate's density is measured on it."""
        weights = self.mean_sample() if weights is None else weights
        return self.pool(ids, weights, key_mask(lengths, ids.shape[1]))

    @property
    def is_bayesian(self) -> bool:
        return self.spec.kind in BAYESIAN_KINDS
