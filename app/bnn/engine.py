"""The fast Monte Carlo engine: three exact samplers for the per-row predictive, chosen by a cost model.

- ``bank``: S weight samples drawn once from a seed when the engine is built and reused by every call:
  no random numbers at request time, bitwise reproducible, the cheapest for any N.
- ``fresh``: S weight samples drawn per call from the call's seed (every row of the call shares them).
- ``local``: local reparameterisation per factor (low-rank layers only). Given a layer's input h, the entries
  of h·B are independent Gaussians with mean h·μ_B and variance h²·σ_B², and given z = h·B the entries of
  z·Aᵀ + b are too; so each row and sample needs r + m normals per layer instead of r(m + n) weight entries.
  Rows no longer share draws (each row's own predictive is exact); the cost grows with N, so it pays for
  small N with a fresh seed.

Low-rank networks run fused paths: rows × samples through the factors without a Python loop over samples,
in a row-major layout for small N and a feature-major layout (activations (S, m, N), chunked over samples so
they stay in cache) for large N. Other kinds go through the generic ``sample``/``propagate`` path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from app.bnn._base import LayerSample, LowRankSample
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import BayesianMLP, LayerKind
from app.bnn.plan import Plan, PlanRefused
from app.bnn.predictive import Predictive, class_probabilities, entropy, predict_with
from app.bnn.spec import MonteCarloError, Sampler  # noqa: F401 - MonteCarloError re-exported

ROW_MAJOR_MAX_ROWS = 16  # measured crossover between the two low-rank layouts on 2 CPU cores
# Feature-major path: samples per chunk so one (chunk, width, N) activation holds about this many floats
# (8 MiB: well inside a 32 MiB L3; 16 samples for the bundled model at N = 1024, measured best).
FEATURE_MAJOR_CHUNK_FLOATS = 1 << 21


@dataclass
class EngineResult:
    """A call's predictive and the plan that drew it (``plan.samples``: the samples drawn, fewer than the cap
    when an adaptive call stopped early)."""

    predictive: Predictive
    plan: Plan

    @property
    def sampler(self) -> Sampler:
        return self.plan.sampler

    @property
    def seed(self) -> int:
        assert self.plan.seed is not None  # execute runs seeded plans only
        return self.plan.seed

    @cached_property
    def mc_error(self) -> MonteCarloError:
        """Computed on first use (it costs another pass over the samples' entropies)."""
        return monte_carlo_error(self.predictive)


@dataclass(frozen=True)
class CostModel:
    """Seconds per standard normal and per multiply-add on this device, measured when the engine is built."""

    seconds_per_normal: float
    seconds_per_mac: float

    @classmethod
    def measure(cls, device: torch.device) -> CostModel:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(256, 256, device=device)
        noise_seconds = _timed(lambda: torch.randn(1 << 20, generator=g, device=device))
        return cls(noise_seconds / (1 << 20), _timed(lambda: a @ a) / 256**3)


def _timed(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - start) / repeats


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class MonteCarloEngine:
    """Evaluate a network's posterior predictive for rows x: (N, d) -> Predictive (S, N, C).

    Args:
        model: the network (eval mode, on its device).
        bank_size: weight samples kept in the frozen bank (0: no bank).
        bank_seed: seed of the bank's draw.
        cost: device costs; measured when None.
    """

    def __init__(self, model: BayesianMLP, bank_size: int, bank_seed: int = 0, cost: CostModel | None = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.lowrank = model.spec.kind is LayerKind.LOWRANK
        self.cost = cost or CostModel.measure(self.device)
        self.bank_seed = bank_seed
        self.bank_size = model.num_samples(bank_size) if bank_size > 0 else 0
        # Per low-rank layer, the moments local reparameterisation needs (the model is frozen once served):
        # μ_B, σ_B², μ_Aᵀ, σ_Aᵀ², μ_c, σ_c².
        self._moments = [
            (
                layer.factor_b.mu.detach(),
                layer.factor_b.sigma.detach().square(),
                layer.factor_a.mu.detach().T.contiguous(),
                layer.factor_a.sigma.detach().square().T.contiguous(),
                layer.bias.mu.detach(),
                layer.bias.sigma.detach().square(),
            )
            for layer in model.layers
            if isinstance(layer, LowRankBayesLinear)
        ]
        self._bank: list[LayerSample] | None = None
        self._bank_layout: list | None = None
        if self.bank_size:
            with torch.no_grad():
                self._bank = model.sample(self.bank_size, torch.Generator(device=self.device).manual_seed(bank_seed))
                if self.lowrank:
                    self._bank_layout = feature_major(self._bank)

    # -- choosing ----------------------------------------------------------------------------------------
    def _macs(self, rows: int, samples: int) -> float:
        return rows * samples * sum(_layer_macs(layer) for layer in self.model.layers)

    def _weight_normals(self, samples: int) -> float:
        return samples * sum(p.numel() for p in self.model.parameters()) / 2  # one normal per (mu, rho) pair

    def _local_normals(self, rows: int, samples: int) -> float:
        return rows * samples * sum(layer.rank + layer.out_features for layer in self.model.layers)

    def estimate(self, sampler: Sampler, rows: int, samples: int) -> float:
        """Predicted seconds of one call (the cost model)."""
        compute = self._macs(rows, samples) * self.cost.seconds_per_mac
        if sampler is Sampler.BANK:
            return compute
        if sampler is Sampler.FRESH:
            return compute + self._weight_normals(samples) * self.cost.seconds_per_normal
        return 2 * compute + self._local_normals(rows, samples) * self.cost.seconds_per_normal

    def _choose(self, rows: int, samples: int, seed: int | None, adaptive: bool) -> Sampler:
        """The bank when the call can use it (no seed or the bank's seed, S within the bank, or any S for an
        adaptive call, which the bank then caps); otherwise the cheaper of fresh and local by the cost model."""
        fits = samples <= self.bank_size or adaptive
        if self._bank is not None and fits and seed in (None, self.bank_seed):
            return Sampler.BANK
        if not self.lowrank or self.model.fixed_samples is not None:
            return Sampler.FRESH
        fresh = self.estimate(Sampler.FRESH, rows, samples)
        return Sampler.LOCAL if self.estimate(Sampler.LOCAL, rows, samples) < fresh else Sampler.FRESH

    def plan(
        self, sampler: Sampler, rows: int, samples: int, seed: int | None = None, tolerance: float | None = None
    ) -> Plan:
        """The one decision of a call on N = ``rows`` rows: ``auto`` resolved by the cost model, S =
        ``model.num_samples(samples)`` (an adaptive bank call is capped by the bank), the seed that replays it
        (the bank's, the call's, or None for the caller to supply) and the tolerance (None for deterministic
        networks and ensembles: nothing to adapt). PlanRefused(option, reason) when the sampler cannot serve
        the call, the option being "sampler", "samples" or "seed"."""
        samples = self.model.num_samples(samples)
        adaptive = tolerance is not None and self.model.fixed_samples is None
        if sampler is Sampler.AUTO:
            sampler = self._choose(rows, samples, seed, tolerance is not None)
        if sampler is Sampler.BANK:
            if self._bank is None:
                raise PlanRefused("sampler", "this model has no frozen bank")
            if tolerance is not None:  # an adaptive call may name the bank whatever its cap: the bank caps it
                samples = min(samples, self.bank_size)
            if samples > self.bank_size:
                raise PlanRefused("samples", f"the bank holds {self.bank_size} samples; {samples} asked")
            if seed not in (None, self.bank_seed):
                raise PlanRefused(
                    "seed", f"the bank was drawn with seed {self.bank_seed}; omit the seed or send that one"
                )
            seed = self.bank_seed
        elif sampler is Sampler.LOCAL and (not self.lowrank or self.model.fixed_samples is not None):
            kind = self.model.spec.kind.value
            raise PlanRefused("sampler", f"local reparameterisation needs a lowrank network, not '{kind}'")
        return Plan(sampler, samples, seed, tolerance if adaptive else None)

    def warm_up_samplers(self) -> list[Sampler]:
        """Every sampler this engine can run (each is run once before the model reports ready)."""
        runnable = []
        for sampler in (Sampler.BANK, Sampler.FRESH, Sampler.LOCAL):
            try:
                self.plan(sampler, 1, 1)
            except PlanRefused:
                continue
            runnable.append(sampler)
        return runnable

    # -- running -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, x: Tensor, weights: list[LayerSample]) -> Predictive:
        """x: (N, d) through a draw from ``model.sample`` that the caller shares among calls -> (S, N, C)."""
        return Predictive(self._propagate(x, weights))

    @torch.no_grad()
    def run(self, x: Tensor, samples: int, seed: int | None, sampler: Sampler = Sampler.AUTO) -> EngineResult:
        """x: (N, d) -> EngineResult with S = ``model.num_samples(samples)`` samples (``plan``, then ``execute``)."""
        return self.execute(x, self.plan(sampler, x.shape[0], samples, seed))

    @torch.no_grad()
    def run_adaptive(
        self,
        x: Tensor,
        seed: int | None,
        tolerance: float,
        max_samples: int,
        chunk: int = 64,
        sampler: Sampler = Sampler.AUTO,
    ) -> EngineResult:
        """Draw ``chunk`` samples at a time until both Monte Carlo standard errors are ≤ ``tolerance`` or
        ``max_samples`` are used (``plan``, then ``execute``)."""
        return self.execute(x, self.plan(sampler, x.shape[0], max_samples, seed, tolerance), chunk)

    @torch.no_grad()
    def execute(self, x: Tensor, plan: Plan, chunk: int = 64) -> EngineResult:
        """x: (N, d) through a seeded plan from ``plan`` -> EngineResult. With a tolerance, ``chunk`` samples at a
        time until both Monte Carlo standard errors are ≤ it or the cap is used; chunks come from consecutive
        slices of the bank, or from one generator, so a seed replays the same stopping point."""
        if plan.seed is None:
            raise ValueError(f"sampler '{plan.sampler.value}' needs a seed")
        generator = None
        if plan.sampler is not Sampler.BANK:
            generator = torch.Generator(device=self.device).manual_seed(plan.seed)
        if plan.tolerance is None:
            return EngineResult(Predictive(self._draw(x, plan.sampler, 0, plan.samples, generator)), plan)
        chunk = max(8, chunk - chunk % 8)
        parts: list[Tensor] = []
        used = 0
        while used < plan.samples:
            size = min(chunk, plan.samples - used)
            parts.append(self._draw(x, plan.sampler, used, size, generator))
            used += size
            error = monte_carlo_error(Predictive(torch.cat(parts)))
            if max(error.probability, error.mutual_information) <= plan.tolerance:
                break
        return EngineResult(Predictive(torch.cat(parts)), replace(plan, samples=used))

    def _draw(self, x: Tensor, sampler: Sampler, start: int, size: int, generator: torch.Generator | None) -> Tensor:
        """x: (N, d) through ``size`` samples -> probs (size, N, C): bank samples [start, start + size), or
        fresh weights or local noise from ``generator``."""
        if sampler is Sampler.BANK:
            stop = start + size
            return self._propagate(x, _slice(self._bank, start, stop), _slice(self._bank_layout, start, stop))  # type: ignore[arg-type]
        if sampler is Sampler.FRESH:
            return self._propagate(x, self.model.sample(size, generator))
        return self._local(x, size, generator)  # type: ignore[arg-type]

    def _propagate(self, x: Tensor, weights: list[LayerSample], layout: list | None = None) -> Tensor:
        """x: (N, d) through drawn weights (and their feature-major layout, if at hand) -> probs (S, N, C)."""
        if not self.lowrank:
            return predict_with(self.model, x, weights).probs
        if x.shape[0] <= ROW_MAJOR_MAX_ROWS:
            logits = _lowrank_row_major(x, weights, self.model)
        else:
            layout = layout if layout is not None else feature_major(weights)
            widest = max(m for _, m in self.model.spec.layer_shapes())
            chunk = max(1, FEATURE_MAJOR_CHUNK_FLOATS // (widest * x.shape[0]))
            logits = _lowrank_feature_major(x, layout, chunk, self.model)
        return class_probabilities(logits, self.model.spec.likelihood)

    def _local(self, x: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """Local reparameterisation through every low-rank layer: x: (N, d) -> probs (S, N, C)."""
        last = len(self._moments) - 1
        rows = x.shape[0]
        h = x  # (N, n): the first layer's input is shared by every sample
        for i, (mu_b, var_b, mu_at, var_at, mu_c, var_c) in enumerate(self._moments):
            rank = mu_b.shape[1]
            flat = h.reshape(-1, h.shape[-1])  # (N or S·N, n)
            mean, std = flat @ mu_b, torch.mm(flat.square(), var_b).sqrt_()  # (·, r)
            shape = (samples, rows, rank) if i == 0 else tuple(mean.shape)
            eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            z = torch.addcmul(mean, std, eps).reshape(-1, rank)  # (S·N, r)
            mean = torch.addmm(mu_c, z, mu_at)
            std = torch.addmm(var_c, z.square(), var_at).sqrt_()
            eps = torch.randn(mean.shape, generator=generator, device=x.device, dtype=x.dtype)
            h = torch.addcmul(mean, std, eps).reshape(samples, rows, -1)
            if i < last:
                h = _activate(h, self.model)
        return class_probabilities(h, self.model.spec.likelihood)


def _slice(weights: list | None, start: int, stop: int) -> list | None:
    """Samples [start, stop) of every tensor of a draw (weights or their augmented form)."""
    if weights is None:
        return None
    # A typed draw (LowRankSample, …) stays typed; the feature-major layout is plain tuples.
    return [
        (getattr(type(layer), "_make", tuple))(None if t is None else t[start:stop] for t in layer) for layer in weights
    ]


def _layer_macs(layer: torch.nn.Module) -> int:
    """Multiply-adds per row and sample of one layer's forward."""
    if isinstance(layer, LowRankBayesLinear):
        return layer.rank * (layer.in_features + layer.out_features)
    return layer.in_features * layer.out_features  # type: ignore[operator]


def _lowrank_row_major(x: Tensor, weights: list[LowRankSample], model: BayesianMLP) -> Tensor:
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
            h = _activate(h, model)
    return h  # type: ignore[return-value]


def feature_major(weights: list[LowRankSample]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """A low-rank draw in the feature-major path's layout, per layer: Bᵀ (S, r, n), A (S, m, r), c (S, m, 1),
    all contiguous (the bank keeps this form, so a call copies nothing)."""
    return [(b.transpose(1, 2).contiguous(), a.contiguous(), c.unsqueeze(2).contiguous()) for a, b, c in weights]


def _lowrank_feature_major(
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
            h = _activate(h, model)
        for i, (bt, a, c) in enumerate(rest):
            h = torch.baddbmm(c[part], a[part], torch.bmm(bt[part], h))
            if i < last:
                h = _activate(h, model)
        outputs.append(h)
    return torch.cat(outputs).transpose(1, 2)  # (S, N, k)


def _activate(h: Tensor, model: BayesianMLP) -> Tensor:
    return h.relu_() if model.spec.activation.value == "relu" else model.activation(h)


def monte_carlo_error(predictive: Predictive, groups: int = 8) -> MonteCarloError:
    """Largest-over-rows standard errors of p(predicted class) and of the mutual information.

    The MI's error uses batch means: the S samples split into ``groups`` equal groups, the MI of each, and
    their standard deviation over sqrt(groups). It is NaN when a group would hold fewer than 2 samples.
    """
    probs = predictive.probs
    samples, rows, classes = probs.shape
    if samples < 2:
        return MonteCarloError(0.0, 0.0)
    predicted = predictive.mean.argmax(-1)
    chosen = probs.gather(-1, predicted.expand(samples, -1).unsqueeze(-1)).squeeze(-1)  # (S, N)
    se_p = float((chosen.std(0) / math.sqrt(samples)).max())
    size = samples // groups
    if size < 2:
        return MonteCarloError(se_p, float("nan"))
    grouped = probs[: groups * size].reshape(groups, size, rows, classes)
    mi = (entropy(grouped.mean(1)) - entropy(grouped).mean(1)).clamp_min(0.0)  # (groups, N)
    return MonteCarloError(se_p, float((mi.std(0) / math.sqrt(groups)).max()))
