"""Networks built from a declarative spec, so a checkpoint rebuilds its network from the manifest alone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.bnn._base import LayerNoise, LayerSample, NoiseSpec, _StochasticLinear
from app.bnn.fullrank import BayesLinear
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.pointestimate import DeterministicLinear, EnsembleLinear, MCDropoutLinear
from app.bnn.rank1 import Rank1BayesLinear
from app.bnn.spec import (  # noqa: F401 - re-exported: the specs' historical home
    BAYESIAN_KINDS,
    Activation,
    LayerKind,
    Likelihood,
    NetworkSpec,
    SequenceNetworkSpec,
    default_ranks,
)

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.RELU: nn.ReLU,
    Activation.TANH: nn.Tanh,
    Activation.GELU: nn.GELU,
}


def _build_layer(
    spec: NetworkSpec | SequenceNetworkSpec, index: int, n: int, m: int, rank: int | None, factory: dict[str, object]
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

    @property
    def fixed_samples(self) -> int | None:
        """The predictive's member count when it does not depend on the request (1 for a point estimate, the
        members of an ensemble); None when every requested sample is a fresh weight draw."""
        return self.layers[0].fixed_samples

    def num_samples(self, requested: int) -> int:
        """Members of the predictive for ``requested`` samples: fixed for deterministic and ensembles."""
        fixed = self.fixed_samples
        return fixed if fixed is not None else requested

    def sample(self, samples: int, generator: torch.Generator | None = None) -> list[LayerSample]:
        """Draw weight samples for every layer, in layer order (reproducible for a seeded generator)."""
        return [layer.sample(samples, generator) for layer in self.layers]

    def noise_specs(self) -> list[list[NoiseSpec]]:
        """The standard noise each layer's weight sample is a function of (empty for point estimates)."""
        return [layer.noise_specs() for layer in self.layers]

    def draw_noise(self, samples: int, generator: torch.Generator | None = None) -> list[LayerNoise]:
        """Standard noise for every layer in layer order; ``sample_from_noise`` of it equals ``sample``."""
        for layer in self.layers:
            layer._check_samples(samples)
        return [layer.draw_noise(samples, generator) for layer in self.layers]

    def sample_from_noise(self, noise: list[LayerNoise]) -> list[LayerSample]:
        """Weight samples for every layer as a deterministic function of ``noise`` (see ``noise_specs``)."""
        return [layer.sample_from_noise(n) for layer, n in zip(self.layers, noise, strict=True)]

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


@torch.no_grad()
def svd_warm_start_(model: BayesianMLP, twin: BayesianMLP) -> None:
    """SVD warm start of a low-rank network from a trained deterministic ``twin`` of the same shape.

    Every layer gets μ_A = U_r Σ_r^{1/2}, μ_B = V_r Σ_r^{1/2} from the SVD of the twin's weight W (m, n), so
    μ_A μ_Bᵀ is W's best rank-r approximation (Eckart–Young), and μ_b = the twin's bias; σ keeps its
    initial value. Raises ValueError when the kinds are not (lowrank, deterministic) or the layers differ.
    """
    if model.spec.kind is not LayerKind.LOWRANK:
        raise ValueError(f"SVD warm start needs a 'lowrank' network, got '{model.spec.kind.value}'")
    if twin.spec.kind is not LayerKind.DETERMINISTIC:
        raise ValueError(f"SVD warm start needs a 'deterministic' twin, got '{twin.spec.kind.value}'")
    if model.spec.layer_shapes() != twin.spec.layer_shapes():
        raise ValueError(
            f"twin layers (in, out) {twin.spec.layer_shapes()} differ from the network's {model.spec.layer_shapes()}"
        )
    if model.spec.activation is not twin.spec.activation or model.spec.likelihood is not twin.spec.likelihood:
        raise ValueError("twin activation or likelihood differs from the network's")
    for layer, dense in zip(model.layers, twin.layers, strict=True):
        assert isinstance(layer, LowRankBayesLinear) and isinstance(dense, DeterministicLinear)  # kinds checked
        layer.warm_start_(dense.weight[0], dense.bias[0])  # weight (1, m, n) -> (m, n), bias (1, m) -> (m,)
