"""The Monte Carlo engine: fused paths equal the reference propagate, every sampler is exact, choices, adaptivity."""

from __future__ import annotations

import math

import pytest
import torch

from app.bnn import BayesianMLP, LayerKind, NetworkSpec
from app.bnn.engine import CostModel, MonteCarloEngine, Sampler, monte_carlo_error
from app.bnn.plan import Plan, PlanRefused
from app.bnn.predictive import Predictive, decompose, predict_with

COST = CostModel(seconds_per_normal=7e-9, seconds_per_mac=5e-11)  # fixed, so choices do not depend on load


def lowrank(hidden: int = 32, seed: int = 0, d: int = 5) -> BayesianMLP:
    spec = NetworkSpec(in_features=d, hidden=[hidden, hidden], ranks=[4, 6, 1])
    model = BayesianMLP(spec, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # wider posteriors than at initialisation, so sampling noise matters
        for layer in model.layers:
            for block in (layer.factor_a, layer.factor_b):
                block.rho.add_(1.5)
    return model.eval()


def rows(n: int, d: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 5, 16, 17, 300])
def test_fused_lowrank_paths_equal_the_reference_propagate(n: int) -> None:
    model = lowrank()
    engine = MonteCarloEngine(model, bank_size=64, cost=COST)
    x = rows(n)
    with torch.no_grad():
        reference = predict_with(model, x, engine._bank).probs  # noqa: SLF001 - the bank's own draws
    result = engine.run(x, 64, None, Sampler.BANK)
    torch.testing.assert_close(result.predictive.probs, reference, rtol=1e-5, atol=1e-6)
    again = engine.run(x, 64, None, Sampler.BANK)
    assert torch.equal(result.predictive.probs, again.predictive.probs), "the bank is bitwise reproducible"
    assert result.seed == engine.bank_seed


@pytest.mark.parametrize("sampler", [Sampler.BANK, Sampler.FRESH, Sampler.LOCAL])
def test_every_sampler_agrees_with_a_long_reference_run(sampler: Sampler) -> None:
    """Predictive mean and MI within their Monte Carlo error of a 40,000-sample reference (fixed seeds)."""
    model = lowrank()
    x = rows(3)
    reference_engine = MonteCarloEngine(model, bank_size=0, cost=COST)
    reference = decompose(reference_engine.run(x, 40_000, 123, Sampler.FRESH).predictive)
    reference_mean = reference_engine.run(x, 40_000, 123, Sampler.FRESH).predictive.mean
    engine = MonteCarloEngine(model, bank_size=4096, bank_seed=7, cost=COST)
    result = engine.run(x, 4096, None if sampler is Sampler.BANK else 5, sampler)
    u = decompose(result.predictive)
    probs = result.predictive.probs[..., 1]  # (S, N)
    se_p = probs.std(0) / math.sqrt(probs.shape[0])
    assert ((result.predictive.mean[:, 1] - reference_mean[:, 1]).abs() <= 4 * se_p + 1e-4).all()
    se_mi = result.mc_error.mutual_information
    assert ((u.epistemic - reference.epistemic).abs() <= 4 * se_mi + 2e-3).all(), (u.epistemic, reference.epistemic)


def test_seeded_samplers_replay_and_differ_by_seed() -> None:
    engine = MonteCarloEngine(lowrank(), bank_size=0, cost=COST)
    x = rows(4)
    for sampler in (Sampler.FRESH, Sampler.LOCAL):
        a = engine.run(x, 128, 9, sampler).predictive.probs
        assert torch.equal(a, engine.run(x, 128, 9, sampler).predictive.probs)
        assert not torch.equal(a, engine.run(x, 128, 10, sampler).predictive.probs)


def test_global_rng_untouched() -> None:
    engine = MonteCarloEngine(lowrank(), bank_size=32, cost=COST)
    state = torch.random.get_rng_state()
    for sampler in (Sampler.BANK, Sampler.FRESH, Sampler.LOCAL):
        engine.run(rows(2), 32, None if sampler is Sampler.BANK else 1, sampler)
    engine.run_adaptive(rows(2), 3, 0.01, 256)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_cost_model_choices() -> None:
    engine = MonteCarloEngine(lowrank(hidden=128, d=9), bank_size=512, bank_seed=3, cost=COST)
    auto = Sampler.AUTO
    assert engine.plan(auto, 1, 512) == Plan(Sampler.BANK, 512, 3)  # the bank's seed replays it
    assert engine.plan(auto, 1, 512, 3) == Plan(Sampler.BANK, 512, 3)
    assert engine.plan(auto, 1, 512, 5) == Plan(Sampler.LOCAL, 512, 5)  # a fresh seed, one row: r + m normals win
    assert engine.plan(auto, 1024, 512, 5).sampler is Sampler.FRESH  # many rows: one shared weight draw wins
    assert engine.plan(auto, 1, 1024) == Plan(Sampler.LOCAL, 1024, None)  # more than the bank holds: seed to come
    assert engine.plan(auto, 1, 4096, None, 0.01) == Plan(Sampler.BANK, 512, 3, 0.01)  # adaptive: the bank caps it
    assert engine.estimate(Sampler.BANK, 1, 512) < engine.estimate(Sampler.FRESH, 1, 512)


def test_refusals_name_the_option_and_the_reason() -> None:
    engine = MonteCarloEngine(lowrank(), bank_size=64, bank_seed=3, cost=COST)
    with pytest.raises(PlanRefused, match="holds 64") as refused:
        engine.plan(Sampler.BANK, 1, 65)
    assert refused.value.option == "samples"
    with pytest.raises(PlanRefused, match="seed 3") as refused:
        engine.plan(Sampler.BANK, 1, 8, 4)
    assert refused.value.option == "seed"
    assert engine.plan(Sampler.BANK, 1, 8, 3) == Plan(Sampler.BANK, 8, 3)
    assert engine.plan(Sampler.BANK, 1, 4096, None, 0.01).samples == 64  # an adaptive bank call is capped
    ensemble = BayesianMLP(
        NetworkSpec(in_features=5, hidden=[8], kind=LayerKind.ENSEMBLE), generator=torch.Generator().manual_seed(0)
    )
    other = MonteCarloEngine(ensemble, bank_size=0, cost=COST)
    with pytest.raises(PlanRefused, match="lowrank"):
        other.plan(Sampler.LOCAL, 1, 8, 1)
    with pytest.raises(PlanRefused, match="this model has no frozen bank") as refused:
        other.plan(Sampler.BANK, 1, 8)
    assert refused.value.option == "sampler"
    assert other.plan(Sampler.FRESH, 1, 100, 2, 0.01) == Plan(Sampler.FRESH, 5, 2, None)  # members: nothing to adapt
    assert other.warm_up_samplers() == [Sampler.FRESH]
    with pytest.raises(ValueError, match="needs a seed"):
        engine.run(rows(1), 8, None, Sampler.FRESH)


def test_execute_runs_the_plan_as_decided() -> None:
    engine = MonteCarloEngine(lowrank(), bank_size=64, bank_seed=3, cost=COST)
    x = rows(3)
    plan = engine.plan(Sampler.AUTO, 3, 32, 9)
    result = engine.execute(x, plan)
    assert result.plan == plan and (result.sampler, result.seed) == (plan.sampler, 9)
    assert torch.equal(result.predictive.probs, engine.run(x, 32, 9).predictive.probs)
    weights = engine.model.sample(32, torch.Generator().manual_seed(9))
    shared = engine.evaluate(x, weights)  # a draw the caller shares: the same numbers as a fresh run
    assert torch.equal(shared.probs, engine.run(x, 32, 9, Sampler.FRESH).predictive.probs)


@pytest.mark.parametrize(
    "kind", [LayerKind.FULLRANK, LayerKind.RANK1, LayerKind.MCDROPOUT, LayerKind.ENSEMBLE, LayerKind.DETERMINISTIC]
)
def test_other_kinds_run_through_the_generic_path(kind: LayerKind) -> None:
    model = BayesianMLP(NetworkSpec(in_features=5, hidden=[8], kind=kind), generator=torch.Generator().manual_seed(0))
    engine = MonteCarloEngine(model, bank_size=32, cost=COST)
    x = rows(6)
    bank = engine.run(x, 32, None)
    with torch.no_grad():
        torch.testing.assert_close(bank.predictive.probs, predict_with(model, x, engine._bank).probs)  # noqa: SLF001
    fresh = engine.run(x, 32, 4, Sampler.FRESH)
    assert fresh.predictive.samples == fresh.plan.samples == model.num_samples(32)
    assert engine.plan(Sampler.AUTO, 6, 32, 4).sampler is Sampler.FRESH


def test_adaptive_stops_at_the_tolerance_and_replays() -> None:
    engine = MonteCarloEngine(lowrank(), bank_size=0, cost=COST)
    x = rows(2)
    loose = engine.run_adaptive(x, 11, 0.02, 4096, chunk=64)
    assert loose.predictive.samples < 4096
    assert max(loose.mc_error.probability, loose.mc_error.mutual_information) <= 0.02
    assert torch.equal(loose.predictive.probs, engine.run_adaptive(x, 11, 0.02, 4096, chunk=64).predictive.probs)
    strict = engine.run_adaptive(x, 11, 1e-6, 256, chunk=64)
    assert strict.predictive.samples == 256
    banked = MonteCarloEngine(lowrank(), bank_size=512, cost=COST).run_adaptive(x, None, 1e-6, 4096)
    assert banked.predictive.samples == 512 and banked.sampler is Sampler.BANK  # capped by the bank
    assert loose.plan.samples == loose.predictive.samples and loose.plan.tolerance == 0.02


def test_monte_carlo_error_of_known_spread() -> None:
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(1600, 1, generator=generator) * 0.2 + 0.4  # uniform on [0.4, 0.6]: std 0.2/sqrt(12)
    probs = torch.stack([1 - p, p], dim=-1)
    error = monte_carlo_error(Predictive(probs))
    assert error.probability == pytest.approx(0.2 / math.sqrt(12) / 40, rel=0.1)
    assert 0.0 <= monte_carlo_error(Predictive(probs[:8])).mutual_information < 0.01  # the jackknife needs S >= 2
    assert monte_carlo_error(Predictive(probs[:1])).probability == 0.0


def _count_steps(engine: MonteCarloEngine, x: torch.Tensor, plan: Plan) -> tuple[int, torch.Tensor]:
    steps, pieces = engine.steps(x, plan), 0
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return pieces, stop.value.predictive.probs
        pieces += 1


@pytest.mark.parametrize(
    ("sampler", "n", "samples", "yields"),
    [
        (Sampler.BANK, 1, 256, 0),  # one piece: nothing to interleave
        (Sampler.BANK, 1024, 256, 3),  # 64 bank samples per piece through 1,024 rows
        (Sampler.FRESH, 1024, 200, 3),  # 64, 64, 64, 8
        (Sampler.LOCAL, 1024, 40, 4),  # 8 samples per piece
        (Sampler.LOCAL, 3, 40, 0),
    ],
)
def test_a_call_runs_piece_by_piece_with_the_same_answer(sampler: Sampler, n: int, samples: int, yields: int) -> None:
    """``steps`` yields between pieces of about PIECE_ROW_SAMPLES rows × samples and ends with ``execute``'s answer."""
    engine = MonteCarloEngine(lowrank(), bank_size=256, cost=COST)
    x = rows(n)
    plan = engine.plan(sampler, n, samples, None if sampler is Sampler.BANK else 4)
    pieces, probs = _count_steps(engine, x, plan)
    assert pieces == yields
    assert torch.equal(probs, engine.execute(x, plan).predictive.probs)


def test_fresh_draws_come_in_units_so_a_seed_gives_the_same_first_samples_whatever_s() -> None:
    """Weights are drawn 64 samples at a time: the first k samples of a seed do not depend on S or N, and a draw
    shared by a batch (``shared_fresh``) is each call's own."""
    engine = MonteCarloEngine(lowrank(), bank_size=0, cost=COST)
    few, many = rows(3), rows(600, seed=2)
    short = engine.run(few, 64, 11, Sampler.FRESH).predictive.probs
    long = engine.run(few, 200, 11, Sampler.FRESH).predictive.probs
    assert torch.equal(long[:64], short)
    shared = engine.shared_fresh([few, many], 200, 11)
    assert torch.equal(shared[0].probs, long)
    assert torch.equal(shared[1].probs, engine.run(many, 200, 11, Sampler.FRESH).predictive.probs)
    adaptive = engine.run_adaptive(few, 11, 1e-9, 128, sampler=Sampler.FRESH)  # never converges: the cap
    assert torch.equal(adaptive.predictive.probs, long[:128])
