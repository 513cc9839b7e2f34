"""The Gaussian mixture predictive: the law of total variance, its CDF and quantiles against a large sample,
intervals that cover at their level, the log density and the CRPS in closed form against direct estimates."""

from __future__ import annotations

import math

import pytest
import torch

from app.bnn.regression import MIN_VARIANCE, GaussianPredictive, gaussian_nll, gaussian_parameters


def mixture(samples: int = 40, rows: int = 3, seed: int = 0) -> GaussianPredictive:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(samples, rows, 1, generator=g, dtype=torch.float64) * 2
    variances = torch.rand(samples, rows, 1, generator=g, dtype=torch.float64) + 0.1
    return GaussianPredictive(means, variances)


def draws(p: GaussianPredictive, count: int = 400_000, seed: int = 1) -> torch.Tensor:
    """Draws from the mixture: (count, N, k)."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(p.samples, (count,), generator=g)
    return p.means[which] + p.variances[which].sqrt() * torch.randn(
        (count, *p.means.shape[1:]), generator=g, dtype=torch.float64
    )


def test_head_parameters_and_the_per_sample_nll() -> None:
    head = torch.tensor([[[0.5, -30.0], [1.0, 2.0]]])  # (S=1, N=2, 2k=2)
    mean, variance = gaussian_parameters(head)
    assert mean.squeeze().tolist() == [0.5, 1.0]
    assert variance[0, 0, 0] >= MIN_VARIANCE and variance[0, 1, 0] == pytest.approx(math.log1p(math.e**2) + 1e-6)
    y = torch.tensor([[0.5], [0.0]])
    expected = -torch.distributions.Normal(mean, variance.sqrt()).log_prob(y).sum(-1)
    torch.testing.assert_close(gaussian_nll(head, y), expected)


def test_total_variance_is_aleatoric_plus_epistemic_and_matches_draws() -> None:
    p = mixture()
    y = draws(p)
    torch.testing.assert_close(p.mean, y.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(p.total, y.var(0), atol=0.05, rtol=0.02)
    torch.testing.assert_close(p.total, p.aleatoric + p.epistemic)
    assert (p.epistemic > 0).all()


def test_quantiles_invert_the_cdf_and_intervals_cover_at_their_level() -> None:
    p = mixture()
    y = draws(p)
    for level in (0.5, 0.9, 0.95):
        low, high = p.interval(level)
        torch.testing.assert_close(p.cdf(low), torch.full_like(low, (1 - level) / 2), atol=1e-9, rtol=0)
        torch.testing.assert_close(p.cdf(high), torch.full_like(high, (1 + level) / 2), atol=1e-9, rtol=0)
        covered = ((y >= low) & (y <= high)).double().mean(0)
        torch.testing.assert_close(covered, torch.full_like(covered, level), atol=0.005, rtol=0)
    one = GaussianPredictive(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))  # a lone Gaussian: ±1.96 at 95%
    assert one.interval(0.95)[1].item() == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        p.interval(1.0)


def test_log_density_and_crps_against_direct_estimates() -> None:
    p = mixture(samples=12)
    y = torch.tensor([[0.3], [-1.0], [4.0]], dtype=torch.float64)
    direct = torch.log(torch.exp(torch.distributions.Normal(p.means, p.variances.sqrt()).log_prob(y)).mean(0))
    torch.testing.assert_close(p.log_prob(y), direct)
    x, x2 = draws(p), draws(p, 400_000).flip(0)
    crps = (x - y).abs().mean(0) - 0.5 * (
        x - x2[torch.randperm(len(x2), generator=torch.Generator().manual_seed(3))]
    ).abs().mean(0)
    torch.testing.assert_close(p.crps(y), crps, atol=0.01, rtol=0.01)
    lone = GaussianPredictive(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))  # CRPS of N(0, 1) at 0: (√2 − 1)/√π
    assert lone.crps(torch.zeros(1, 1)).item() == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), abs=1e-6)
