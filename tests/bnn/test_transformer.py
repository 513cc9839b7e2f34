"""The Bayesian Transformer encoder: each drawn sample is torch's own pre-norm encoder with that weight, every
kind's embedding gather equals its map on one-hot rows, padding changes nothing, the Bayesian parts are a
config, and the sequence engine's batched passes equal one sample at a time."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from app.bnn._base import DenseSample, LowRankSample
from app.bnn.network import parameter_count
from app.bnn.pointestimate import DeterministicLinear
from app.bnn.sequence_engine import SequenceMonteCarloEngine, slice_draw
from app.bnn.spec import LayerKind, Likelihood, Sampler, TextNetworkSpec, TextPart
from app.bnn.transformer import BayesianTransformer

VOCAB, LENGTH, D_MODEL = 40, 12, 16


def spec(kind: LayerKind = LayerKind.LOWRANK, **overrides: object) -> TextNetworkSpec:
    settings: dict[str, object] = {"vocab_size": VOCAB, "max_length": LENGTH, "d_model": D_MODEL, "heads": 4}
    settings |= {"layers": 2, "d_ff": 24, "kind": kind, "ranks": None} | overrides
    if kind is LayerKind.LOWRANK and settings["ranks"] is None:
        settings["ranks"] = [4] * len(TextNetworkSpec(**(settings | {"kind": LayerKind.FULLRANK})).map_shapes())
        settings["ranks"][-1] = 1  # type: ignore[index]
    return TextNetworkSpec(**settings)  # type: ignore[arg-type]


def model(kind: LayerKind = LayerKind.LOWRANK, **overrides: object) -> BayesianTransformer:
    return BayesianTransformer(spec(kind, **overrides), generator=torch.Generator().manual_seed(0)).eval()


def tokens(n: int = 3, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def dense(layer_sample: object, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample s of a map's draw as a dense (weight (m, n), bias (m,)); a point estimate's one weight for any s."""
    if isinstance(layer_sample, LowRankSample):
        return layer_sample.a[s] @ layer_sample.b[s].T, layer_sample.bias[s]
    assert isinstance(layer_sample, DenseSample)
    index = s if layer_sample.weight.shape[0] > 1 else 0
    return layer_sample.weight[index], layer_sample.bias[index]


@pytest.mark.parametrize("kind", [LayerKind.LOWRANK, LayerKind.FULLRANK])
def test_each_sample_is_torchs_encoder_with_that_weight(kind: LayerKind) -> None:
    """Sample s equals nn.TransformerEncoderLayer (pre-norm, GELU, padding mask) given sample s's Q, K, V,
    output and feed-forward weights (A·Bᵀ formed for the check only), the embedding table's columns plus the
    learned positions in front, the final LayerNorm and the head on position 0 behind."""
    net = model(kind)
    ids, lengths = tokens(), torch.tensor([LENGTH, 7, 2])
    padding = torch.arange(LENGTH) >= lengths.unsqueeze(1)
    with torch.no_grad():
        weights = net.sample(3, torch.Generator().manual_seed(2))
        ours = net.propagate(ids, weights, lengths)
        for s in range(3):
            table, table_bias = dense(weights.embedding, s)
            h = (table.T[ids] + table_bias + net.positions[0, 0, :LENGTH]).clone()
            for layer, draw in zip(net.layers, weights.layers, strict=True):
                reference = nn.TransformerEncoderLayer(
                    D_MODEL, 4, 24, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
                ).eval()
                q, k, v = (dense(draw.query, s), dense(draw.key, s), dense(draw.value, s))
                reference.self_attn.in_proj_weight.copy_(torch.cat([q[0], k[0], v[0]]))
                reference.self_attn.in_proj_bias.copy_(torch.cat([q[1], k[1], v[1]]))
                for target, source in [
                    (reference.self_attn.out_proj, draw.attention_output),
                    (reference.linear1, draw.feedforward_in),
                    (reference.linear2, draw.feedforward_out),
                ]:
                    target.weight.copy_(dense(source, s)[0])
                    target.bias.copy_(dense(source, s)[1])
                for target, norm in [
                    (reference.norm1, layer.attention_norm),
                    (reference.norm2, layer.feedforward_norm),
                ]:
                    target.weight.copy_(norm.weight.reshape(-1))
                    target.bias.copy_(norm.bias.reshape(-1))
                h = reference(h, src_key_padding_mask=padding)
            cls = nn.functional.layer_norm(h[:, 0], (D_MODEL,)) * net.final_norm.weight.reshape(-1)
            cls = cls + net.final_norm.bias.reshape(-1)
            head_w, head_b = dense(weights.head, s)
            torch.testing.assert_close(ours[s], cls @ head_w.T + head_b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_the_embedding_gather_is_the_map_on_one_hot_rows(kind: LayerKind) -> None:
    """Every kind's lookup (a gather of the ids' rows) equals its map applied to one-hot inputs."""
    net = model(kind, dropout=0.5)
    layer = net.embedding
    draw = layer.sample(layer.fixed_samples or 6, torch.Generator().manual_seed(3))
    ids = tokens(2, 5)
    one_hot = nn.functional.one_hot(ids.reshape(-1), VOCAB).float().unsqueeze(0)
    expected = layer.propagate(one_hot, draw)
    expected = expected.reshape(expected.shape[0], 2, 5, D_MODEL)
    torch.testing.assert_close(layer.lookup(ids, draw), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_padding_changes_nothing(kind: LayerKind) -> None:
    """A row's logits depend on its own valid tokens only: not on what fills its padding, nor on how far
    its batch pads it."""
    net = model(kind)
    ids, lengths = tokens(), torch.tensor([LENGTH, 6, 3])
    with torch.no_grad():
        weights = net.sample(net.num_samples(4), torch.Generator().manual_seed(4))
        padded = net.propagate(ids, weights, lengths)
        refilled = ids.clone()
        refilled[1, 6:], refilled[2, 3:] = 0, 5
        torch.testing.assert_close(net.propagate(refilled, weights, lengths), padded)
        alone = net.propagate(ids[2:3, :3], weights)
        torch.testing.assert_close(alone[:, 0], padded[:, 2], atol=1e-5, rtol=1e-5)


def test_the_bayesian_parts_are_a_config() -> None:
    """The paper's default makes embedding, attention, feed-forward and head Bayesian; a part left out is a
    point estimate (no KL, no noise); an ensemble's and MC dropout's maps follow the same rule."""
    default = model()
    assert not isinstance(default.embedding, DeterministicLinear)
    assert isinstance(default.layers[0].maps["attention_output"], DeterministicLinear)
    assert spec().bayesian == (TextPart.EMBEDDING, TextPart.ATTENTION, TextPart.FEEDFORWARD, TextPart.HEAD)
    narrow = model(bayesian=(TextPart.HEAD,), ranks=None)
    assert isinstance(narrow.embedding, DeterministicLinear)
    assert all(isinstance(m, DeterministicLinear) for layer in narrow.layers for m in layer.maps.values())
    with torch.no_grad():
        assert 0.0 < float(narrow.kl()) < float(default.kl())
    assert parameter_count(narrow) < parameter_count(model(LayerKind.FULLRANK))
    ensemble = model(LayerKind.ENSEMBLE, members=3)
    assert ensemble.fixed_samples == 3 and ensemble.positions.shape[0] == 3
    assert model(LayerKind.DETERMINISTIC).fixed_samples == 1


def test_parameters_are_the_factors_plus_the_point_estimates() -> None:
    """A low-rank Bayesian map costs 2r(m + n) + 2m, a full-rank one 2mn + 2m, a point-estimate map mn + m;
    positions and LayerNorms are the same for both kinds."""
    shared = LENGTH * D_MODEL + 2 * D_MODEL * (2 * 2 + 1)  # positions, two norms per block and the final one
    low_spec, full_spec = spec(), spec(LayerKind.FULLRANK)
    low = full = shared
    for (n, m), rank, bayesian in zip(
        low_spec.map_shapes(), low_spec.map_ranks(), low_spec.map_is_bayesian(), strict=True
    ):
        low += 2 * rank * (n + m) + 2 * m if bayesian else n * m + m
        full += 2 * n * m + 2 * m if bayesian else n * m + m
    assert full_spec.map_is_bayesian() == low_spec.map_is_bayesian()
    assert parameter_count(model()) == low
    assert parameter_count(model(LayerKind.FULLRANK)) == full


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 18}, "multiple of heads"),
        ({"bayesian": ()}, "at least one part"),
        ({"likelihood": Likelihood.GAUSSIAN}, "classifier"),
        ({"kind": LayerKind.FULLRANK, "ranks": [2] * 15}, "apply to kind"),
    ],
)
def test_the_spec_refuses_what_cannot_be_built(overrides: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"vocab_size": VOCAB, "max_length": LENGTH, "d_model": D_MODEL}
    with pytest.raises(ValidationError, match=message):
        TextNetworkSpec(**(settings | overrides))  # type: ignore[arg-type]


def test_too_long_or_bad_lengths_are_refused() -> None:
    net = model()
    weights = net.sample(2)
    with pytest.raises(ValueError, match="at most"):
        net.propagate(torch.zeros((1, LENGTH + 1), dtype=torch.long), weights)
    with pytest.raises(ValueError, match="lengths"):
        net.propagate(tokens(1), weights, torch.tensor([0]))


def test_training_reaches_every_parameter() -> None:
    """One ELBO-style backward gives every parameter a gradient: positions, norms, factors, head."""
    net = model().train()
    logits = net(tokens(), torch.tensor([LENGTH, 4, 2]), generator=torch.Generator().manual_seed(5))
    (logits.sum() + net.kl()).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("kind", [LayerKind.LOWRANK, LayerKind.MCDROPOUT, LayerKind.ENSEMBLE])
def test_the_engine_batches_all_samples_as_one_sample_at_a_time(kind: LayerKind) -> None:
    """The bank's S samples in one pass equal each sample alone; blocks of rows change nothing; fresh draws
    replay by seed."""
    net = model(kind)
    engine = SequenceMonteCarloEngine(net, bank_size=8, bank_seed=3)
    ids, lengths = tokens(5), torch.tensor([LENGTH, 9, 5, 2, 1])
    plan = engine.plan(Sampler.BANK, 8)
    batched = engine.execute(ids, lengths, plan)
    assert batched.shape == (net.num_samples(8), 5, 1)
    assert engine._bank is not None
    for s in range(batched.shape[0]):
        one = net.propagate(ids, slice_draw(engine._bank, s, s + 1), lengths)
        torch.testing.assert_close(one[0], batched[s], atol=1e-5, rtol=1e-5)
    fresh = engine.plan(Sampler.FRESH, 8, seed=11)
    torch.testing.assert_close(engine.execute(ids, lengths, fresh), engine.execute(ids, lengths, fresh))
    engine.block_rows = lambda samples, steps: 2  # type: ignore[method-assign]
    torch.testing.assert_close(engine.execute(ids, lengths, plan), batched, atol=1e-6, rtol=1e-5)
