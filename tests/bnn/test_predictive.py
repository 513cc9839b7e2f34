"""The predictive and its decomposition on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from app.bnn import (
    BayesianMLP,
    LayerKind,
    Likelihood,
    NetworkSpec,
    Predictive,
    class_probabilities,
    decompose,
    entropy,
    predict,
)


def h(*p: float) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_disagreeing_samples_give_mutual_information() -> None:
    probs = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]], dtype=torch.float64)  # (S=2, N=1, C=2)
    u = decompose(Predictive(probs))
    assert float(u.total) == pytest.approx(math.log(2))
    assert float(u.aleatoric) == pytest.approx(h(0.9, 0.1))
    assert float(u.epistemic) == pytest.approx(math.log(2) - h(0.9, 0.1))
    assert float(u.std) == pytest.approx(0.4)  # p(class 0) is 0.9 and 0.1: population std 0.4


def test_agreeing_samples_give_zero_epistemic_exactly() -> None:
    probs = torch.tensor([[[0.3, 0.7]]] * 4)
    u = decompose(Predictive(probs))
    assert float(u.epistemic) == 0.0
    assert float(u.total) == pytest.approx(h(0.3, 0.7), rel=1e-6)
    assert float(u.std) == 0.0


def test_three_class_decomposition() -> None:
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]], dtype=torch.float64)
    u = decompose(Predictive(probs))
    assert float(u.aleatoric) == 0.0  # every sample is certain
    assert float(u.epistemic) == pytest.approx(math.log(3))
    assert float(entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))


def test_bernoulli_logit_becomes_two_classes() -> None:
    logits = torch.tensor([[[0.0], [2.0]]])
    probs = class_probabilities(logits, Likelihood.BERNOULLI)
    assert probs.shape == (1, 2, 2)
    positive = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(probs[0, 1], torch.stack([1 - positive, positive]))
    softmax = class_probabilities(torch.zeros(1, 1, 4), Likelihood.CATEGORICAL)
    torch.testing.assert_close(softmax, torch.full((1, 1, 4), 0.25))


@pytest.mark.parametrize("kind", [LayerKind.LOWRANK, LayerKind.MCDROPOUT, LayerKind.ENSEMBLE])
def test_predict_is_independent_of_row_chunking(kind: LayerKind) -> None:
    model = BayesianMLP(NetworkSpec(in_features=5, hidden=[16], kind=kind), generator=torch.Generator().manual_seed(0))
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
    a = predict(model, x, 32, torch.Generator().manual_seed(4), chunk_rows=5)
    b = predict(model, x, 32, torch.Generator().manual_seed(4), chunk_rows=256)
    torch.testing.assert_close(a.probs, b.probs, rtol=1e-5, atol=1e-6)
    assert a.probs.shape == (model.num_samples(32), 37, 2)
    torch.testing.assert_close(a.probs.sum(-1), torch.ones(a.probs.shape[:2]))


def test_predict_rejects_bad_shapes() -> None:
    model = BayesianMLP(NetworkSpec(in_features=5, hidden=[4]), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        predict(model, torch.zeros(5), 4)


@pytest.mark.parametrize(("samples", "rows", "classes"), [(512, 4, 2), (2048, 30, 3), (7, 5, 2), (1, 3, 2)])
def test_decompose_with_error_is_decompose_and_monte_carlo_error_bitwise(samples: int, rows: int, classes: int) -> None:
    from app.bnn.engine import monte_carlo_error
    from app.bnn.predictive import decompose_with_error

    probs = torch.rand(samples, rows, classes, generator=torch.Generator().manual_seed(samples))
    predictive = Predictive(probs / probs.sum(-1, keepdim=True))
    fused, error = decompose_with_error(predictive)
    apart = decompose(predictive)
    for name in ("total", "aleatoric", "epistemic", "std"):
        assert torch.equal(getattr(fused, name), getattr(apart, name)), name
    expected = monte_carlo_error(predictive)
    assert error.probability == expected.probability
    assert error.mutual_information == expected.mutual_information or math.isnan(expected.mutual_information)


@pytest.mark.parametrize("samples", [64, 256])
def test_the_mutual_informations_error_matches_its_spread_over_repeated_draws(samples: int) -> None:
    """The jackknife SE of each row's MI against the MI's std over 400 independent S-sample draws of a known
    logit-normal posterior (5 rows from narrow to wide): within 20% of it on average; at S = 64 closer than the
    batch means over 8 groups it replaced, which came out low there (at S = 256 both are within 5%)."""
    from app.bnn.predictive import entropy, mutual_information_error

    generator = torch.Generator().manual_seed(samples)
    mu, sd = torch.tensor([0.0, 1.0, 2.0, -3.0, 0.5]), torch.tensor([0.5, 1.0, 2.0, 1.0, 0.2])
    mis, jackknife, batch_means = [], [], []
    for _ in range(400):
        p1 = torch.sigmoid(mu + sd * torch.randn(samples, 5, generator=generator, dtype=torch.float64))
        probs = torch.stack([1 - p1, p1], dim=-1)
        per_sample = entropy(probs)
        mis.append(entropy(probs.mean(0)) - per_sample.mean(0))
        jackknife.append(mutual_information_error(probs, per_sample))
        groups = probs.reshape(8, samples // 8, 5, 2)
        batch_means.append((entropy(groups.mean(1)) - entropy(groups).mean(1)).std(0) / math.sqrt(8))
    spread = torch.stack(mis).std(0)
    ratio = torch.stack(jackknife).mean(0) / spread
    old = torch.stack(batch_means).mean(0) / spread
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio
    if samples == 64:
        assert (ratio - 1).abs().mean() < (old - 1).abs().mean(), (ratio, old)
    print(f"S = {samples}: jackknife {ratio.min():.2f}-{ratio.max():.2f}, batch means {old.min():.2f}-{old.max():.2f}")
