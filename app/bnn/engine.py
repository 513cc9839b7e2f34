"""The fast Monte Carlo engine: three exact samplers for the per-row predictive, chosen by a cost model.

- ``bank``: S weight samples drawn once from a seed when the engine is built and reused by every call:
  no random numbers at request time, bitwise reproducible, the cheapest for any N.
- ``fresh``: S weight samples drawn per call from the call's seed (every row of the call shares them).
- ``local``: local reparameterisation per factor (low-rank layers only). Given a layer's input h, the entries
  of h·B are independent Gaussians with mean h·μ_B and variance h²·σ_B², and given z = h·B the entries of
  z·Aᵀ + b are too; so each row and sample needs r + m normals per layer instead of r(m + n) weight entries.
  Rows no longer share draws (each row's own predictive is exact); the cost grows with N, so it pays for
  small N with a fresh seed.

Low-rank networks run fused paths (``app.bnn.fused``): rows × samples through the factors without a Python
loop over samples. Other kinds go through the generic ``sample``/``propagate`` path. A call runs piece by piece
(``steps``; the pieces are in ``app.bnn.plan``), so memory stays bounded and a server can interleave calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from app.bnn._base import LayerSample
from app.bnn.fused import (
    FEATURE_MAJOR_CHUNK_FLOATS,
    ROW_MAJOR_MAX_ROWS,
    feature_major,
    lowrank_feature_major,
    lowrank_row_major,
    slice_samples,
)
from app.bnn.local import layer_moments, local_logits
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import BayesianMLP, LayerKind, Likelihood
from app.bnn.plan import DRAW_UNIT, Plan, PlanRefused, largest_error, piece_samples, run_to_end, summary_rows
from app.bnn.predictive import Predictive, class_probabilities, entropy, mutual_information_error, predict_with
from app.bnn.spec import MonteCarloError, Sampler  # noqa: F401 - MonteCarloError re-exported


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


# The auto sampler chooses with these fixed costs, never with this start's timings, so that a replay with the
# reported seed picks the same sampler on every restart and every machine. They are the medians of 7
# ``CostModel.measure`` runs on the 2-core CPU machine of bench/results/engine.md (2026-12-02).
REFERENCE_COST = CostModel(seconds_per_normal=2.36e-9, seconds_per_mac=1.02e-11)


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
        cost: the costs the auto sampler chooses with; REFERENCE_COST (fixed: replays are stable) when None.
    """

    def __init__(self, model: BayesianMLP, bank_size: int, bank_seed: int = 0, cost: CostModel | None = None) -> None:
        if model.spec.likelihood is Likelihood.GAUSSIAN:
            raise ValueError("a regression MLP: this engine scores classifiers; see RegressionBankScorer")
        self.model = model
        self.device = next(model.parameters()).device
        self.lowrank = model.spec.kind is LayerKind.LOWRANK
        self.widest = max(m for _, m in model.spec.layer_shapes())
        self.classes = 2 if model.spec.likelihood is Likelihood.BERNOULLI else model.spec.out_features
        self.cost = cost or REFERENCE_COST
        self.bank_seed = bank_seed
        self.bank_size = model.num_samples(bank_size) if bank_size > 0 else 0
        self._moments = layer_moments(model) if self.lowrank else []  # for the local sampler
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

    def local_max_rows(self) -> int:
        """The most rows N for which ``_choose`` prefers ``local`` to ``fresh`` (the same at every S: both costs
        are linear in S), 0 when it never does or the network cannot run ``local``. The ONNX export records it,
        so that the torch-free backend chooses as this engine does."""
        if not self.lowrank or self.model.fixed_samples is not None:
            return 0

        def pays(rows: int) -> bool:
            return self.estimate(Sampler.LOCAL, rows, 1) < self.estimate(Sampler.FRESH, rows, 1)

        if not pays(1):
            return 0
        low, high = 1, 2
        while pays(high):  # local's extra cost grows with N, fresh's weight draw does not: this ends
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if pays(middle) else (low, middle)
        return low

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
        """x: (N, d) through a seeded plan from ``plan`` -> EngineResult (``steps``, run to the end)."""
        return run_to_end(self.steps(x, plan, chunk))

    @torch.no_grad()
    def steps(self, x: Tensor, plan: Plan, chunk: int = 64) -> Generator[None, None, EngineResult]:
        """``execute`` one piece at a time (``app.bnn.plan``): yields between pieces, so that the caller may run
        other work or stop, and returns the EngineResult. With a tolerance, ``chunk`` samples at a time until
        both Monte Carlo standard errors are ≤ it or the cap is used; chunks come from consecutive slices of
        the bank, or from one generator, so a seed replays the same stopping point."""
        if plan.seed is None:
            raise ValueError(f"sampler '{plan.sampler.value}' needs a seed")
        generator = None
        if plan.sampler is not Sampler.BANK:
            generator = torch.Generator(device=self.device).manual_seed(plan.seed)
        # One buffer for the per-sample probabilities, filled piece by piece: no list of parts to concatenate,
        # and no small long-lived tensors between the pieces' temporaries (they fragment the heap: measured).
        probs = torch.empty((plan.samples, x.shape[0], self.classes), device=x.device, dtype=x.dtype)
        if plan.tolerance is None:
            yield from self._pieces(x, plan.sampler, 0, plan.samples, generator, probs)
            return EngineResult(Predictive(probs), plan)
        chunk = max(8, chunk - chunk % 8)
        used = 0
        while used < plan.samples:
            size = min(chunk, plan.samples - used)
            yield from self._pieces(x, plan.sampler, used, size, generator, probs)
            used += size
            yield
            error = yield from monte_carlo_error_steps(Predictive(probs[:used]))
            if max(error.probability, error.mutual_information) <= plan.tolerance:
                break
        return EngineResult(Predictive(probs[:used]), replace(plan, samples=used))

    @torch.no_grad()
    def shared_fresh(self, xs: list[Tensor], samples: int, seed: int) -> list[Predictive]:
        """Several calls' rows, each (N_i, d), through one fresh draw of S samples from ``seed`` -> (S, N_i, C)
        each: drawn unit by unit as a lone call draws it, so each answer is that call's ``execute`` alone."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        outs = [torch.empty((samples, x.shape[0], self.classes), device=x.device, dtype=x.dtype) for x in xs]
        start = 0
        for size in self._draw_units(samples):
            weights = self.model.sample(size, generator)
            for out, x in zip(outs, xs, strict=True):
                out[start : start + size] = self._propagate(x, weights)
            start += size
        return [Predictive(out) for out in outs]

    def _pieces(
        self, x: Tensor, sampler: Sampler, start: int, size: int, generator: torch.Generator | None, out: Tensor
    ) -> Generator[None, None, None]:
        """``_draw`` of samples [start, start + size) into ``out`` (S, N, C), one piece at a time, yielding
        between pieces."""
        step = size if self.model.fixed_samples is not None else piece_samples(sampler, x.shape[0])
        for offset in range(0, size, step):
            if offset:
                yield
            first, count = start + offset, min(step, size - offset)
            self._draw(x, sampler, first, count, generator, out[first : first + count])

    def _draw_units(self, samples: int) -> list[int]:
        """The sizes of the fresh draws S samples are made of (the members, for fixed-member networks)."""
        if self.model.fixed_samples is not None:
            return [samples]
        return [min(DRAW_UNIT, samples - start) for start in range(0, samples, DRAW_UNIT)]

    def _draw(
        self, x: Tensor, sampler: Sampler, start: int, size: int, generator: torch.Generator | None, out: Tensor
    ) -> None:
        """x: (N, d) through ``size`` samples into ``out`` (size, N, C): bank samples [start, start + size), or
        fresh weights (whole draw units, ``start`` being a multiple of one) or local noise from ``generator``."""
        if sampler is Sampler.BANK:
            stop = start + size
            bank, layout = slice_samples(self._bank, start, stop), slice_samples(self._bank_layout, start, stop)
            out.copy_(self._propagate(x, bank, layout))  # type: ignore[arg-type]
        elif sampler is Sampler.FRESH:
            first = 0
            for count in self._draw_units(size):
                out[first : first + count] = self._propagate(x, self.model.sample(count, generator))
                first += count
        else:
            out.copy_(self._local(x, size, generator))  # type: ignore[arg-type]

    def _propagate(self, x: Tensor, weights: list[LayerSample], layout: list | None = None) -> Tensor:
        """x: (N, d) through drawn weights (and their feature-major layout, if at hand) -> probs (S, N, C)."""
        if not self.lowrank:
            return predict_with(self.model, x, weights).probs
        if x.shape[0] <= ROW_MAJOR_MAX_ROWS:
            logits = lowrank_row_major(x, weights, self.model)
        else:
            layout = layout if layout is not None else feature_major(weights)
            chunk = max(1, FEATURE_MAJOR_CHUNK_FLOATS // (self.widest * x.shape[0]))
            logits = lowrank_feature_major(x, layout, chunk, self.model)
        return class_probabilities(logits, self.model.spec.likelihood)

    def _local(self, x: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """Local reparameterisation through every low-rank layer (``app.bnn.local``): x: (N, d) -> probs (S, N, C)."""

        def noise(shape: tuple[int, ...]) -> Tensor:
            return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)

        logits = local_logits(x, self._moments, samples, noise, self.model)
        return class_probabilities(logits, self.model.spec.likelihood)


def _layer_macs(layer: torch.nn.Module) -> int:
    """Multiply-adds per row and sample of one layer's forward."""
    if isinstance(layer, LowRankBayesLinear):
        return layer.rank * (layer.in_features + layer.out_features)
    return layer.in_features * layer.out_features  # type: ignore[operator]


def monte_carlo_error(predictive: Predictive) -> MonteCarloError:
    """Largest-over-rows standard errors of p(predicted class) and of the mutual information (its
    delete-one-group jackknife: :func:`app.bnn.predictive.mutual_information_error`); (0, 0) below 2 samples."""
    probs = predictive.probs
    samples = probs.shape[0]
    if samples < 2:
        return MonteCarloError(0.0, 0.0)
    predicted = predictive.mean.argmax(-1)
    chosen = probs.gather(-1, predicted.expand(samples, -1).unsqueeze(-1)).squeeze(-1)  # (S, N)
    se_p = float((chosen.std(0) / math.sqrt(samples)).max())
    return MonteCarloError(se_p, float(mutual_information_error(probs, entropy(probs)).max()))


def monte_carlo_error_steps(predictive: Predictive) -> Generator[None, None, MonteCarloError]:
    """``monte_carlo_error`` a block of rows at a time (``summary_rows``), yielding between blocks."""
    block = summary_rows(predictive.samples)
    errors: list[MonteCarloError] = []
    for start in range(0, predictive.probs.shape[1], block):
        if errors:
            yield
        errors.append(monte_carlo_error(Predictive(predictive.probs[:, start : start + block])))
    return largest_error(errors)
