"""Torch-free specifications: what a network, its prior and its sampler are, as saved in a manifest.

Kept apart from the modules that build them, so that reading a checkpoint's manifest (and serving an ONNX
export) needs pydantic only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.bnn.init import InitSpec

if TYPE_CHECKING:
    from app.bnn.priors import Prior


class PriorKind(str, Enum):
    MIXTURE = "mixture"
    GAUSSIAN = "gaussian"


class PriorSpec(BaseModel):
    """Serializable description of a prior; ``build()`` returns the prior object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: PriorKind = PriorKind.MIXTURE
    pi: float = Field(0.5, gt=0.0, lt=1.0, description="Weight of the wide component (mixture).")
    sigma1: float = Field(1.0, gt=0.0, description="Std dev of the wide component (mixture).")
    sigma2: float = Field(math.exp(-6.0), gt=0.0, description="Std dev of the narrow component (mixture).")
    sigma: float = Field(1.0, gt=0.0, description="Std dev of the Gaussian prior.")

    def build(self) -> Prior:
        # Imported here: the prior objects need torch, this module must not.
        from app.bnn.priors import GaussianPrior, ScaleMixturePrior

        if self.kind is PriorKind.MIXTURE:
            return ScaleMixturePrior(self.pi, self.sigma1, self.sigma2)
        return GaussianPrior(self.sigma)


class LayerKind(str, Enum):
    LOWRANK = "lowrank"
    FULLRANK = "fullrank"
    RANK1 = "rank1"
    DETERMINISTIC = "deterministic"
    MCDROPOUT = "mcdropout"
    ENSEMBLE = "ensemble"


class Activation(str, Enum):
    RELU = "relu"
    TANH = "tanh"
    GELU = "gelu"


class Likelihood(str, Enum):
    BERNOULLI = "bernoulli"  # one logit, two classes
    CATEGORICAL = "categorical"  # one logit per class
    GAUSSIAN = "gaussian"  # heteroscedastic regression: a mean and a raw scale per target (sequence networks)


MIN_VARIANCE = 1e-6  # a floor on a Gaussian head's σ_s², so a sample can never claim a zero-width likelihood
BISECTION_STEPS = 60  # halvings of a mixture quantile's bracket: 2^-60 of its width, below float64's resolution
INTERVAL_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)  # the central predictive intervals a regression reports

BAYESIAN_KINDS = frozenset({LayerKind.LOWRANK, LayerKind.FULLRANK, LayerKind.RANK1})


def _check_outputs_and_ranks(
    likelihood: Likelihood,
    out_features: int,
    kind: LayerKind,
    ranks: list[int] | None,
    shapes: list[tuple[int, int]],
    unit: str,
) -> None:
    """ValueError unless the outputs suit the likelihood and ``ranks`` (lowrank only) has one valid rank per
    ``unit`` (a layer of an MLP, a map of a sequence network) of ``shapes``."""
    if likelihood is Likelihood.BERNOULLI and out_features != 1:
        raise ValueError("a bernoulli likelihood needs out_features = 1")
    if likelihood is Likelihood.CATEGORICAL and out_features < 2:
        raise ValueError("a categorical likelihood needs out_features ≥ 2")
    if ranks is None:
        return
    if kind is not LayerKind.LOWRANK:
        raise ValueError(f"ranks apply to kind 'lowrank' only, not '{kind.value}'")
    if len(ranks) != len(shapes):
        raise ValueError(f"ranks needs one entry per {unit} ({len(shapes)}), got {len(ranks)}")
    for i, (rank, (n, m)) in enumerate(zip(ranks, shapes, strict=True)):
        if not 1 <= rank <= min(n, m):
            raise ValueError(f"ranks[{i}] must be in [1, {min(n, m)}] for a {n}→{m} {unit}, got {rank}")


class NetworkSpec(BaseModel):
    """Everything needed to rebuild a network; saved whole in the checkpoint manifest.

    The default is the paper's clinical MLP: d → 128 → 128 → 1, ReLU, rank 15 in the hidden layers and
    rank 1 at the output (a requested rank is capped at min(m, n) of its layer). A gaussian likelihood (a
    regression) ends in a mean and a raw scale per target (``head_features`` = 2·``out_features``), rank 2.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_features: int = Field(ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    out_features: int = Field(1, ge=1)
    kind: LayerKind = LayerKind.LOWRANK
    ranks: list[int] | None = Field(None, description="Rank per layer (lowrank only); None: 15 hidden, 1 out.")
    activation: Activation = Activation.RELU
    likelihood: Likelihood = Likelihood.BERNOULLI
    prior: PriorSpec = Field(default_factory=PriorSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="MC dropout rate on hidden layers' inputs.")
    members: int = Field(5, ge=2, le=64, description="Ensemble members.")

    @model_validator(mode="after")
    def _check(self) -> NetworkSpec:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be ≥ 1, got {self.hidden}")
        _check_outputs_and_ranks(
            self.likelihood, self.out_features, self.kind, self.ranks, self.layer_shapes(), "layer"
        )
        return self

    @property
    def head_features(self) -> int:
        """The output layer's width: a mean and a raw scale per target (gaussian), else one logit per class."""
        return 2 * self.out_features if self.likelihood is Likelihood.GAUSSIAN else self.out_features

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer."""
        sizes = [self.in_features, *self.hidden, self.head_features]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    def layer_ranks(self) -> list[int | None]:
        """The rank of every layer (None for kinds without one)."""
        if self.kind is not LayerKind.LOWRANK:
            return [None] * len(self.layer_shapes())
        if self.ranks is not None:
            return list(self.ranks)
        return default_ranks(self.layer_shapes(), output_rank=default_output_rank(self.likelihood))


class SequenceNetworkSpec(BaseModel):
    """A recurrent network: ``layers`` LSTM layers of width ``hidden`` over sequences of ``in_features`` per
    step, then a head on the last valid step's state. Each LSTM layer has two maps (input n → 4H and recurrent
    H → 4H, the four gates packed i, f, g, o) and the head one (H → k), all of ``kind``.

    ``ranks`` (lowrank only): one per map in order [layer 0 input, layer 0 recurrent, layer 1 input, …, head];
    None: 16 for the gate maps and the head's full rank, each capped at min(m, n). For a gaussian likelihood
    the head gives a mean and a raw scale per target (k = 2·``out_features``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: Literal["lstm"] = Field("lstm", description="Tells a manifest's network apart from an MLP's.")
    in_features: int = Field(ge=1, description="Features per time step.")
    hidden: int = Field(64, ge=1)
    layers: int = Field(2, ge=1, le=8)
    out_features: int = Field(1, ge=1, description="Targets (gaussian) or classes (categorical; 1 for bernoulli).")
    kind: LayerKind = LayerKind.LOWRANK
    ranks: list[int] | None = None
    likelihood: Likelihood = Likelihood.GAUSSIAN
    prior: PriorSpec = Field(default_factory=PriorSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="MC dropout rate on the hidden state's inputs.")
    members: int = Field(5, ge=2, le=64, description="Ensemble members.")

    @model_validator(mode="after")
    def _check(self) -> SequenceNetworkSpec:
        _check_outputs_and_ranks(self.likelihood, self.out_features, self.kind, self.ranks, self.map_shapes(), "map")
        return self

    @property
    def head_features(self) -> int:
        """The head's outputs: a mean and a raw scale per target (gaussian), else one logit per class."""
        return 2 * self.out_features if self.likelihood is Likelihood.GAUSSIAN else self.out_features

    def map_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every map: per layer the input and the recurrent map, then the head."""
        gates = 4 * self.hidden
        shapes = []
        for layer in range(self.layers):
            shapes += [(self.in_features if layer == 0 else self.hidden, gates), (self.hidden, gates)]
        return [*shapes, (self.hidden, self.head_features)]

    def map_ranks(self) -> list[int | None]:
        """The rank of every map (None for kinds without one)."""
        shapes = self.map_shapes()
        if self.kind is not LayerKind.LOWRANK:
            return [None] * len(shapes)
        if self.ranks is not None:
            return list(self.ranks)
        return map_ranks_with(shapes, MAP_RANK)


class TextPart(str, Enum):
    """The maps of a Transformer encoder whose weights can be Bayesian (``TextNetworkSpec.bayesian``)."""

    EMBEDDING = "embedding"  # the token embedding table, vocabulary → d_model
    ATTENTION = "attention"  # the query, key and value projections
    ATTENTION_OUTPUT = "attention_output"  # the projection of the heads' concatenation
    FEEDFORWARD = "feedforward"  # both feed-forward maps
    HEAD = "head"  # the classifier on the CLS position


# The paper's choice: the token embedding, Q, K, V and the feed-forward maps are low rank. It is silent on the
# attention output and the head; the head is Bayesian here as in every sbnn network, the output projection not.
PAPER_BAYESIAN_PARTS: tuple[TextPart, ...] = (
    TextPart.EMBEDDING,
    TextPart.ATTENTION,
    TextPart.FEEDFORWARD,
    TextPart.HEAD,
)
TEXT_LAYER_MAPS: tuple[tuple[str, TextPart], ...] = (
    ("query", TextPart.ATTENTION),
    ("key", TextPart.ATTENTION),
    ("value", TextPart.ATTENTION),
    ("attention_output", TextPart.ATTENTION_OUTPUT),
    ("feedforward_in", TextPart.FEEDFORWARD),
    ("feedforward_out", TextPart.FEEDFORWARD),
)


class TextNetworkSpec(BaseModel):
    """A pre-norm Transformer encoder over token ids: a token embedding plus learned positions, ``layers``
    blocks of multi-head self-attention and a feed-forward map (each behind a LayerNorm, with a residual), a
    final LayerNorm, and a classifier head on position 0 (the tokenizer's CLS token).

    The maps of the parts in ``bayesian`` are of ``kind``; the others are point estimates (an ensemble's are
    per member). Maps in order: [embedding, per layer (query, key, value, attention_output, feedforward_in,
    feedforward_out), head]. ``ranks`` (lowrank only): one per map, used by the Bayesian ones; None: 16 for
    every Bayesian map and the head's full rank, each capped at min(m, n).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: Literal["transformer"] = Field("transformer", description="Tells a manifest's network apart.")
    vocab_size: int = Field(ge=2, description="Token ids 0..vocab_size-1 (the tokenizer's vocabulary).")
    max_length: int = Field(64, ge=2, le=4096, description="Positions, CLS included.")
    d_model: int = Field(64, ge=2)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1, le=12)
    d_ff: int = Field(128, ge=1)
    out_features: int = Field(1, ge=1, description="Classes (1 for bernoulli).")
    kind: LayerKind = LayerKind.LOWRANK
    bayesian: tuple[TextPart, ...] = PAPER_BAYESIAN_PARTS
    ranks: list[int] | None = None
    activation: Activation = Activation.GELU
    likelihood: Likelihood = Likelihood.BERNOULLI
    prior: PriorSpec = Field(default_factory=PriorSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="MC dropout rate on the Bayesian maps' inputs.")
    members: int = Field(5, ge=2, le=64, description="Ensemble members.")

    @model_validator(mode="after")
    def _check(self) -> TextNetworkSpec:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        if self.likelihood is Likelihood.GAUSSIAN:
            raise ValueError("a text network is a classifier: its likelihood is bernoulli or categorical")
        if not self.bayesian:
            raise ValueError("bayesian must name at least one part (a deterministic network is kind 'deterministic')")
        if len(set(self.bayesian)) != len(self.bayesian):
            raise ValueError(f"bayesian names a part twice: {[p.value for p in self.bayesian]}")
        _check_outputs_and_ranks(self.likelihood, self.out_features, self.kind, self.ranks, self.map_shapes(), "map")
        return self

    @property
    def head_features(self) -> int:
        return self.out_features

    def map_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every map, in the order the class docstring gives."""
        d, f = self.d_model, self.d_ff
        block = [(d, d), (d, d), (d, d), (d, d), (d, f), (f, d)]
        return [(self.vocab_size, d), *block * self.layers, (d, self.head_features)]

    def map_parts(self) -> list[TextPart]:
        """The part every map belongs to, in map order."""
        return [TextPart.EMBEDDING, *[part for _, part in TEXT_LAYER_MAPS] * self.layers, TextPart.HEAD]

    def map_is_bayesian(self) -> list[bool]:
        """Whether each map is of ``kind`` (else a point estimate); every map of a point-estimate kind is."""
        if self.kind not in BAYESIAN_KINDS and self.kind is not LayerKind.MCDROPOUT:
            return [True] * len(self.map_shapes())
        return [part in self.bayesian for part in self.map_parts()]

    def map_ranks(self) -> list[int | None]:
        """The rank of every map (None for point-estimate maps and kinds without one)."""
        shapes, bayesian = self.map_shapes(), self.map_is_bayesian()
        if self.kind is not LayerKind.LOWRANK:
            return [None] * len(shapes)
        ranks = self.ranks or map_ranks_with(shapes, MAP_RANK)
        return [rank if b else None for rank, b in zip(ranks, bayesian, strict=True)]


MAP_RANK = 16  # the paper's r for its recurrent and attention maps: the sequence and text specs' default


def map_ranks_with(shapes: list[tuple[int, int]], rank: int) -> list[int]:
    """``rank`` for every map but the head, each capped at min(m, n), and the head at its full rank."""
    return [min(rank, n, m) for n, m in shapes[:-1]] + [min(shapes[-1])]


def default_output_rank(likelihood: Likelihood) -> int:
    """The output layer's default rank: 1 for logits (the paper's), 2 for a Gaussian head, so that the mean
    and the scale are not tied to one direction of the last hidden layer."""
    return 2 if likelihood is Likelihood.GAUSSIAN else 1


def default_ranks(shapes: list[tuple[int, int]], hidden_rank: int = 15, output_rank: int = 1) -> list[int]:
    """The paper's ranks (15 hidden, 1 at the output), each capped at min(n, m) of its layer."""
    ranks = [hidden_rank] * (len(shapes) - 1) + [output_rank]
    return [min(r, n, m) for r, (n, m) in zip(ranks, shapes, strict=True)]


class Sampler(str, Enum):
    AUTO = "auto"
    BANK = "bank"
    FRESH = "fresh"
    LOCAL = "local"


# Groups of the mutual information's delete-one-group jackknife (at most one group per sample). Against the
# spread of the MI over 400 repeated draws of a logit-normal posterior it came out at 0.90-1.02x that spread at
# S = 64 and 1.00-1.04x at S = 256, where the batch means over 8 groups used before gave 0.80-0.94x and
# 0.97-1.01x (tests/bnn/test_predictive.py).
MC_ERROR_GROUPS = 32


@dataclass(frozen=True)
class MonteCarloError:
    """Monte Carlo standard errors, the largest over rows: of the predicted class's probability, and of
    the mutual information (a delete-one-group jackknife over ``MC_ERROR_GROUPS`` groups of samples)."""

    probability: float
    mutual_information: float
