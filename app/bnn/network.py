"""Networks built from a declarative spec, so a checkpoint rebuilds its network from the manifest alone."""

from __future__ import annotations

from enum import Enum

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from app.bnn._base import LayerSample, _StochasticLinear
from app.bnn.fullrank import BayesLinear
from app.bnn.init import InitSpec
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.pointestimate import DeterministicLinear, EnsembleLinear, MCDropoutLinear
from app.bnn.priors import PriorSpec
from app.bnn.rank1 import Rank1BayesLinear


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


BAYESIAN_KINDS = frozenset({LayerKind.LOWRANK, LayerKind.FULLRANK, LayerKind.RANK1})


class NetworkSpec(BaseModel):
    """Everything needed to rebuild a network; saved whole in the checkpoint manifest.

    The default is the paper's clinical MLP: d → 128 → 128 → 1, ReLU, rank 15 in the hidden layers and
    rank 1 at the output (a requested rank is capped at min(m, n) of its layer).
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
        if self.likelihood is Likelihood.BERNOULLI and self.out_features != 1:
            raise ValueError("a bernoulli likelihood needs out_features = 1")
        if self.likelihood is Likelihood.CATEGORICAL and self.out_features < 2:
            raise ValueError("a categorical likelihood needs out_features ≥ 2")
        if self.ranks is not None:
            if self.kind is not LayerKind.LOWRANK:
                raise ValueError(f"ranks apply to kind 'lowrank' only, not '{self.kind.value}'")
            shapes = self.layer_shapes()
            if len(self.ranks) != len(shapes):
                raise ValueError(f"ranks needs one entry per layer ({len(shapes)}), got {len(self.ranks)}")
            for i, (rank, (n, m)) in enumerate(zip(self.ranks, shapes, strict=True)):
                if not 1 <= rank <= min(n, m):
                    raise ValueError(f"ranks[{i}] must be in [1, {min(n, m)}] for a {n}→{m} layer, got {rank}")
        return self

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer."""
        sizes = [self.in_features, *self.hidden, self.out_features]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    def layer_ranks(self) -> list[int | None]:
        """The rank of every layer (None for kinds without one)."""
        if self.kind is not LayerKind.LOWRANK:
            return [None] * len(self.layer_shapes())
        if self.ranks is not None:
            return list(self.ranks)
        return default_ranks(self.layer_shapes())


def default_ranks(shapes: list[tuple[int, int]], hidden_rank: int = 15, output_rank: int = 1) -> list[int]:
    """The paper's ranks (15 hidden, 1 at the output), each capped at min(n, m) of its layer."""
    ranks = [hidden_rank] * (len(shapes) - 1) + [output_rank]
    return [min(r, n, m) for r, (n, m) in zip(ranks, shapes, strict=True)]


_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.RELU: nn.ReLU,
    Activation.TANH: nn.Tanh,
    Activation.GELU: nn.GELU,
}


def _build_layer(
    spec: NetworkSpec, index: int, n: int, m: int, rank: int | None, factory: dict[str, object]
) -> _StochasticLinear:
    kind = spec.kind
    common = {"init": spec.init, **factory}
    if kind is LayerKind.LOWRANK:
        assert rank is not None  # layer_ranks() gives one for every lowrank layer
        return LowRankBayesLinear(n, m, rank, prior=spec.prior, **common)
    if kind is LayerKind.FULLRANK:
        return BayesLinear(n, m, prior=spec.prior, **common)
    if kind is LayerKind.RANK1:
        return Rank1BayesLinear(n, m, prior=spec.prior, **common)
    if kind is LayerKind.DETERMINISTIC:
        return DeterministicLinear(n, m, **common)
    if kind is LayerKind.MCDROPOUT:
        # The first layer sees the features themselves: dropping a lab value is not the method.
        return MCDropoutLinear(n, m, p=0.0 if index == 0 else spec.dropout, **common)
    return EnsembleLinear(n, m, members=spec.members, **common)


class BayesianMLP(nn.Module):
    """A multilayer perceptron of one layer kind, evaluated for S weight samples in one batched pass.

    Args:
        spec: the architecture.
        generator: source of the initial values (None: the global RNG, as ``nn.Linear`` does).

    Shape:
        x: (N, d) -> logits (S, N, k), S fixed to 1 (deterministic) or M (ensemble).
    """

    def __init__(
        self,
        spec: NetworkSpec,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        factory: dict[str, object] = {"generator": generator, "device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            _build_layer(spec, i, n, m, rank, factory)
            for i, ((n, m), rank) in enumerate(zip(spec.layer_shapes(), spec.layer_ranks(), strict=True))
        )
        self.activation = _ACTIVATIONS[spec.activation]()

    def num_samples(self, requested: int) -> int:
        """Members of the predictive for ``requested`` samples: fixed for deterministic and ensembles."""
        fixed = self.layers[0].fixed_samples
        return fixed if fixed is not None else requested

    def sample(self, samples: int, generator: torch.Generator | None = None) -> list[LayerSample]:
        """Draw weight samples for every layer, in layer order (reproducible for a seeded generator)."""
        return [layer.sample(samples, generator) for layer in self.layers]

    def propagate(self, x: Tensor, weights: list[LayerSample]) -> Tensor:
        """x: (N, d) -> logits (S, N, k) through drawn ``weights``."""
        h = x.unsqueeze(0)  # (1, N, d): the input is shared by every sample
        last = len(self.layers) - 1
        for i, (layer, w) in enumerate(zip(self.layers, weights, strict=True)):
            h = layer.propagate(h, w)
            if i < last:
                h = self.activation(h)
        return h

    def forward(self, x: Tensor, samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """x: (N, d) -> logits (S, N, k) with S = ``num_samples(samples)`` fresh weight samples."""
        return self.propagate(x, self.sample(self.num_samples(samples), generator))

    def kl(self, generator: torch.Generator | None = None) -> Tensor:
        """Σ over layers of KL(q ‖ prior); Monte Carlo for the mixture prior, 0 for point estimates."""
        return torch.stack([layer.kl(generator) for layer in self.layers]).sum()

    @property
    def is_bayesian(self) -> bool:
        return self.spec.kind in BAYESIAN_KINDS


def parameter_count(module: nn.Module) -> int:
    """Number of trainable scalars (variational means and scales both count, as in the paper)."""
    return sum(p.numel() for p in module.parameters())
