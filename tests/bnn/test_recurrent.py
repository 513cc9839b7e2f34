"""The Bayesian LSTM: every kind through one interface, the same recurrence as torch's nn.LSTM for a drawn
weight, one draw per sequence reused at every step, padding that changes nothing, and the sequence engine's
batched passes equal to one sample at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.bnn._base import DenseSample, LowRankSample
from app.bnn.network import parameter_count
from app.bnn.recurrent import BayesianLSTM, SequenceSample
from app.bnn.sequence_engine import SequenceMonteCarloEngine, slice_draw
from app.bnn.spec import LayerKind, Likelihood, Sampler, SequenceNetworkSpec

FEATURES, HIDDEN, STEPS = 5, 8, 6


def spec(kind: LayerKind = LayerKind.LOWRANK, **overrides: object) -> SequenceNetworkSpec:
    return SequenceNetworkSpec(in_features=FEATURES, hidden=HIDDEN, layers=2, kind=kind, **overrides)


def model(kind: LayerKind = LayerKind.LOWRANK, **overrides: object) -> BayesianLSTM:
    return BayesianLSTM(spec(kind, **overrides), generator=torch.Generator().manual_seed(0)).eval()


def rows(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, STEPS, FEATURES, generator=torch.Generator().manual_seed(seed))


def dense(layer_sample: object, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample s of a map's draw as a dense (weight (m, n), bias (m,))."""
    if isinstance(layer_sample, LowRankSample):
        return layer_sample.a[s] @ layer_sample.b[s].T, layer_sample.bias[s]
    assert isinstance(layer_sample, DenseSample)
    return layer_sample.weight[s], layer_sample.bias[s]


@pytest.mark.parametrize("kind", [LayerKind.LOWRANK, LayerKind.FULLRANK])
def test_each_sample_is_torchs_lstm_with_that_weight(kind: LayerKind) -> None:
    """Sample s through our recurrence equals nn.LSTM given W_ih, W_hh (A·Bᵀ formed for the check only) and
    biases of sample s, then the head on the last state: the weights are drawn once and reused at every step."""
    net = model(kind)
    x = rows()
    with torch.no_grad():
        weights = net.sample(3, torch.Generator().manual_seed(2))
        ours = net.propagate(x, weights)
        for s in range(3):
            reference = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
            for index, layer in enumerate(weights.layers):
                w_ih, b_ih = dense(layer.input, s)
                w_hh, b_hh = dense(layer.recurrent, s)
                getattr(reference, f"weight_ih_l{index}").copy_(w_ih)
                getattr(reference, f"weight_hh_l{index}").copy_(w_hh)
                getattr(reference, f"bias_ih_l{index}").copy_(b_ih)
                getattr(reference, f"bias_hh_l{index}").copy_(b_hh)
            out, _ = reference(x)
            head_w, head_b = dense(weights.head, s)
            torch.testing.assert_close(ours[s], out[:, -1] @ head_w.T + head_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_kind_gives_its_samples_and_a_kl(kind: LayerKind) -> None:
    net = model(kind)
    out = net(rows(), samples=4, generator=torch.Generator().manual_seed(0))
    expected = net.num_samples(4)
    assert out.shape == (expected, 4, 2)  # a mean and a raw scale (gaussian likelihood)
    assert torch.isfinite(out).all()
    kl = net.kl(torch.Generator().manual_seed(0))
    assert torch.isfinite(kl) and (kl > 0) == net.is_bayesian
    if kind is LayerKind.DETERMINISTIC:
        assert expected == 1
    if kind is LayerKind.ENSEMBLE:
        assert expected == 5 and not torch.equal(out[0], out[1])


def test_lowrank_has_fewer_parameters_than_full_rank() -> None:
    """2r(m + n) + 2m per map against 2mn + 2m."""
    wide = {"in_features": 15, "hidden": 64}
    low = BayesianLSTM(SequenceNetworkSpec(**wide, kind=LayerKind.LOWRANK))
    full = BayesianLSTM(SequenceNetworkSpec(**wide, kind=LayerKind.FULLRANK))
    expected = 0
    for (n, m), r in zip(low.spec.map_shapes(), low.spec.map_ranks(), strict=True):
        expected += 2 * r * (m + n) + 2 * m  # type: ignore[operator]
    assert parameter_count(low) == expected
    assert parameter_count(full) == sum(2 * m * n + 2 * m for n, m in full.spec.map_shapes())
    assert parameter_count(low) < parameter_count(full) / 2


def test_padding_past_a_rows_length_changes_nothing() -> None:
    """A row of length 3 padded with garbage to T answers as the same 3 steps alone."""
    net = model()
    x = rows(3)
    weights = net.sample(4, torch.Generator().manual_seed(5))
    padded = x.clone()
    padded[1, 3:] = 1e3
    with torch.no_grad():
        masked = net.propagate(padded, weights, torch.tensor([STEPS, 3, STEPS]))
        short = net.propagate(x[1:2, :3], weights)
        full = net.propagate(x, weights)
    torch.testing.assert_close(masked[:, 1], short[:, 0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(masked[:, [0, 2]], full[:, [0, 2]], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="lengths"):
        net.propagate(x, weights, torch.tensor([0, 1, 2]))


def test_mc_dropout_masks_hold_across_steps() -> None:
    """One mask per sequence and sample: the recurrent map's mask drops the same hidden units at every step."""
    net = model(LayerKind.MCDROPOUT, dropout=0.5)
    weights = net.sample(2, torch.Generator().manual_seed(0))
    assert weights.layers[0].input.mask is None  # the features themselves are not dropped
    mask = weights.layers[0].recurrent.mask
    assert mask is not None and mask.shape == (2, HIDDEN) and bool((mask == 0).any())


def test_the_engine_runs_all_samples_at_once_as_one_at_a_time() -> None:
    net = model()
    engine = SequenceMonteCarloEngine(net, bank_size=16, bank_seed=3)
    x, lengths = rows(7), torch.tensor([6, 2, 5, 6, 1, 4, 6])
    head, plan = engine.run(x, lengths, samples=16)
    assert plan.sampler is Sampler.BANK and plan.seed == 3 and head.shape == (16, 7, 2)
    bank = engine._bank
    assert bank is not None
    for s in (0, 9, 15):
        alone = net.propagate(x, slice_draw(bank, s, s + 1), lengths)
        torch.testing.assert_close(head[s : s + 1], alone, atol=1e-6, rtol=1e-6)
    again, _ = engine.run(x, lengths, samples=16)
    assert torch.equal(head, again)  # the bank replays bit for bit
    # Blocks of rows (forced small here) give the same answers.
    engine.block_rows = lambda samples, steps: 2  # type: ignore[method-assign]
    torch.testing.assert_close(engine.run(x, lengths, samples=16)[0], head, atol=1e-6, rtol=1e-6)


def test_fresh_draws_replay_by_seed_and_the_bank_refuses_what_it_cannot_serve() -> None:
    engine = SequenceMonteCarloEngine(model(), bank_size=8)
    x = rows()
    first, plan = engine.run(x, None, samples=8, seed=11)
    assert plan.sampler is Sampler.FRESH and plan.seed == 11
    assert torch.equal(first, engine.run(x, None, samples=8, seed=11)[0])
    assert not torch.equal(first, engine.run(x, None, samples=8, seed=12)[0])
    assert engine.plan(Sampler.AUTO, 9).sampler is Sampler.FRESH  # more than the bank holds
    with pytest.raises(ValueError, match="seed"):
        engine.run(x, None, samples=9)  # fresh needs the caller's seed
    for sampler, samples, seed in [(Sampler.BANK, 9, None), (Sampler.BANK, 8, 5), (Sampler.LOCAL, 8, 1)]:
        with pytest.raises(ValueError):
            engine.plan(sampler, samples, seed)


def test_specs_validate_ranks_and_likelihoods() -> None:
    assert spec().map_ranks() == [5, 8, 8, 8, 2]  # min(16, n, m) per gate map, the head's full rank
    with pytest.raises(ValueError, match="ranks"):
        spec(ranks=[1, 2])
    with pytest.raises(ValueError, match="bernoulli"):
        spec(likelihood=Likelihood.BERNOULLI, out_features=2)
    categorical = spec(likelihood=Likelihood.CATEGORICAL, out_features=3)
    assert categorical.head_features == 3 and spec().head_features == 2
    assert isinstance(model().sample(1), SequenceSample)


def test_a_lowrank_lstm_learns_a_toy_sequence_regression() -> None:
    """Gradients reach every map: 150 Adam steps on y = the sum of the last step's features, one weight sample
    per step (the ELBO's data term plus a small KL), cut the held-out NLL of the 64-sample predictive."""
    from app.bnn.regression import GaussianPredictive, gaussian_nll

    torch.manual_seed(0)
    net = BayesianLSTM(spec(), generator=torch.Generator().manual_seed(0))
    x, x_test = rows(256, seed=3), rows(64, seed=4)
    target = lambda inputs: inputs[:, -1].sum(-1, keepdim=True)  # noqa: E731
    y, y_test = target(x), target(x_test)

    def held_out_nll() -> float:
        with torch.no_grad():
            head = net(x_test, samples=64, generator=torch.Generator().manual_seed(9))
        return float(-GaussianPredictive.from_head(head).log_prob(y_test).mean())

    before = held_out_nll()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        loss = gaussian_nll(net(x), y).mean() + 1e-4 * net.kl() / len(x)
        loss.backward()
        optimiser.step()
    assert held_out_nll() < before - 0.5
