"""The PAC-Bayes bound report: every term recomputed independently, refusals, the card and `sbnn bound`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.bnn.functional import sigma_from_rho
from app.bnn.network import BayesianMLP, LayerKind, svd_warm_start_
from app.bnn.priors import kl_quadrature
from app.bnn.spec import PriorKind, PriorSpec
from app.checkpoint.io import Checkpoint, load_checkpoint
from app.cli import app as cli
from app.data.dataset import TabularDataset, load_dataset
from app.errors import BoundError
from app.evaluate.bound import BoundReport, bound_report, mcallester_bound
from app.evaluate.bound_markdown import render_bound_markdown
from app.evaluate.card import render_card
from app.evaluate.evaluate import evaluate

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "flchain-mortality"
BAYESIAN = [LayerKind.LOWRANK, LayerKind.FULLRANK, LayerKind.RANK1]
# Few samples and nodes keep every report here well under a second; the terms are checked, not the defaults.
SAMPLES, POINTS = 16, 128


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Checkpoint:
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def data(tiny: Checkpoint) -> TabularDataset:
    return load_dataset(tiny.manifest.data)


def with_network(checkpoint: Checkpoint, seed: int, **changes: object) -> Checkpoint:
    """The checkpoint with a freshly initialised network whose spec differs by ``changes`` (kind, hidden, …)."""
    if "kind" in changes and changes["kind"] is not LayerKind.LOWRANK:
        changes.setdefault("ranks", None)
    spec = checkpoint.model.spec.model_copy(update=changes)
    model = BayesianMLP(spec, generator=torch.Generator().manual_seed(seed)).eval()
    manifest = checkpoint.manifest.model_copy(update={"kind": spec.kind, "network": spec})
    return dataclasses.replace(checkpoint, manifest=manifest, model=model)


def test_mcallester_terms_are_the_formula(tiny: Checkpoint, data: TabularDataset) -> None:
    report = bound_report(tiny, data, delta=0.1, samples=SAMPLES, points=POINTS)
    rows = len(data.train.y)
    assert report.rows == rows and report.delta == 0.1
    assert report.kl == pytest.approx(sum(layer.kl for layer in report.layers), rel=1e-12)
    confidence = math.log(2 * math.sqrt(rows) / 0.1)
    assert report.confidence_term == pytest.approx(confidence, rel=1e-12)
    assert report.complexity == pytest.approx(math.sqrt((report.kl + confidence) / (2 * rows)), rel=1e-12)
    assert report.bound == pytest.approx(report.gibbs_risk + report.complexity, rel=1e-12)
    assert report.vacuous is (report.bound >= 1.0)
    assert report.kl_max == pytest.approx(2 * rows * (1 - report.gibbs_risk) ** 2 - confidence, rel=1e-12)
    # At KL = kl_max the bound is exactly 1 (where kl_max ≥ 0).
    if report.kl_max >= 0:
        assert mcallester_bound(report.gibbs_risk, report.kl_max, rows, 0.1)[2] == pytest.approx(1.0, abs=1e-12)
    assert report.majority_error == pytest.approx(1 - np.bincount(data.train.y).max() / rows)


@pytest.mark.parametrize("kind", BAYESIAN)
def test_layer_kl_is_the_sum_of_kl_quadrature_over_entries(
    tiny: Checkpoint, data: TabularDataset, kind: LayerKind
) -> None:
    checkpoint = tiny if kind is LayerKind.LOWRANK else with_network(tiny, seed=1, kind=kind)
    if kind is LayerKind.RANK1:  # move the scales off their prior's centre, or every KL entry would be alike
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in checkpoint.model.layers:
                layer.scale_out.mu.add_(0.1 * torch.randn(layer.scale_out.shape, generator=generator))
    report = bound_report(checkpoint, data, samples=SAMPLES, points=POINTS)
    prior = checkpoint.model.spec.prior.build()
    for layer, terms in zip(checkpoint.model.layers, report.layers, strict=True):
        if kind is LayerKind.LOWRANK:
            blocks = [(layer.factor_a, 0.0), (layer.factor_b, 0.0), (layer.bias, 0.0)]
        elif kind is LayerKind.FULLRANK:
            blocks = [(layer.weight, 0.0), (layer.bias, 0.0)]
        else:  # the prior applies to the scales minus 1
            blocks = [(layer.scale_out, 1.0), (layer.scale_in, 1.0)]
        expected = sum(
            float(
                kl_quadrature(
                    b.mu.detach().double() - offset, sigma_from_rho(b.rho.detach().double()), prior, POINTS
                ).sum()
            )
            for b, offset in blocks
        )
        assert terms.kl == pytest.approx(expected, rel=1e-12)
        assert terms.stochastic_entries == sum(b.mu.numel() for b, _ in blocks)
        m, n = layer.out_features, layer.in_features
        assert terms.shape == (m, n) and terms.dense_parameters == m * n
        if kind is LayerKind.LOWRANK:
            assert terms.rank == layer.rank and terms.factor_parameters == layer.rank * (m + n)
            assert terms.complexity_ratio == pytest.approx(math.sqrt(layer.rank * (m + n) / (m * n)))
        elif kind is LayerKind.FULLRANK:
            assert terms.rank is None and terms.complexity_ratio == 1.0
        else:
            assert terms.rank is None and terms.factor_parameters == m + n
    assert (report.caveat is not None) is (kind is LayerKind.RANK1)


def test_quadrature_kl_agrees_with_the_training_monte_carlo_kl(tiny: Checkpoint, data: TabularDataset) -> None:
    report = bound_report(tiny, data, samples=SAMPLES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([tiny.model.kl(generator).detach().double() for _ in range(1000)])
    std_error = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - report.kl) < 5 * std_error + 1e-6 * report.kl


def test_quadrature_error_is_stated_and_small(tiny: Checkpoint, data: TabularDataset) -> None:
    report = bound_report(tiny, data, samples=SAMPLES, points=512)
    prior = tiny.model.spec.prior.build()
    assert 0.0 <= report.kl_error < 1e-6
    coarse = sum(
        float(kl_quadrature(b.mu.detach().double(), sigma_from_rho(b.rho.detach().double()), prior, 128).sum())
        for layer in tiny.model.layers
        for b in (layer.factor_a, layer.factor_b, layer.bias)
    )
    assert abs(report.kl - coarse) <= report.kl_error + 1e-9  # a sum of per-entry |Δ| bounds |Δ of the sum|
    gaussian = with_network(tiny, seed=2, kind=LayerKind.FULLRANK, prior=PriorSpec(kind=PriorKind.GAUSSIAN))
    assert bound_report(gaussian, data, samples=SAMPLES).kl_error == 0.0  # closed form: nothing to state


def test_rank_bias_and_energy_match_a_numpy_svd_of_the_twin(tiny: Checkpoint, data: TabularDataset) -> None:
    twin = with_network(tiny, seed=4, kind=LayerKind.DETERMINISTIC)
    report = bound_report(tiny, data, twin=twin, samples=SAMPLES, points=POINTS)
    assert report.has_twin and report.twin == str(twin.path)
    for layer, dense, terms in zip(tiny.model.layers, twin.model.layers, report.layers, strict=True):
        weight = dense.weight.detach()[0].double().numpy()  # (m, n)
        u, s, vh = np.linalg.svd(weight, full_matrices=False)
        r = layer.rank
        np.testing.assert_allclose(terms.singular_values, s, rtol=1e-10)
        assert terms.rank_bias == pytest.approx(math.sqrt(float((s[r:] ** 2).sum())), abs=1e-10)
        assert terms.retained_energy == pytest.approx(float((s[:r] ** 2).sum() / (s**2).sum()), rel=1e-10)
        truncated = (u[:, :r] * s[:r]) @ vh[:r]
        mean = (layer.factor_a.mu.detach().double() @ layer.factor_b.mu.detach().double().T).numpy()
        assert terms.learning_error == pytest.approx(float(np.linalg.norm(mean - truncated)), rel=1e-8)

    # Warm-started from the twin, μ_A μ_Bᵀ is W*'s best rank-r approximation: no learning error yet.
    warm = with_network(tiny, seed=5)
    svd_warm_start_(warm.model, twin.model)
    warm_report = bound_report(warm, data, twin=twin, samples=SAMPLES, points=POINTS)
    assert all(layer.learning_error < 1e-5 for layer in warm_report.layers)


def test_gibbs_risk_is_the_mean_of_per_sample_error_rates(tiny: Checkpoint, data: TabularDataset) -> None:
    report = bound_report(tiny, data, samples=7, seed=5, points=POINTS)
    model = tiny.model
    x = torch.as_tensor(tiny.manifest.preprocessing.transform(data.train.frame))
    y = torch.as_tensor(data.train.y)
    with torch.no_grad():
        weights = model.sample(7, torch.Generator().manual_seed(5))  # the report's draws, in the same order
        rates = []
        for s in range(7):
            one = [tuple(w[s : s + 1] for w in layer) for layer in weights]  # the s-th weight sample alone
            positive = torch.sigmoid(model.propagate(x, one)[0, :, 0])  # (N,)
            predicted = (positive > 0.5).long()  # argmax of [1 − p, p], ties to class 0
            rates.append(float((predicted != y).double().mean()))
    assert 0.0 <= report.gibbs_risk <= 1.0
    assert report.gibbs_risk == pytest.approx(float(np.mean(rates)), abs=1e-12)
    assert report.gibbs_risk_std_error == pytest.approx(float(np.std(rates, ddof=1)) / math.sqrt(7), abs=1e-12)
    assert bound_report(tiny, data, samples=7, seed=5, points=POINTS) == report, "same seed, same report"


@pytest.mark.parametrize("kind", [LayerKind.DETERMINISTIC, LayerKind.MCDROPOUT, LayerKind.ENSEMBLE])
def test_point_estimate_kinds_are_refused(tiny: Checkpoint, data: TabularDataset, kind: LayerKind) -> None:
    with pytest.raises(BoundError, match=f"'{kind.value}' is a point-estimate kind"):
        bound_report(with_network(tiny, seed=0, kind=kind), data)


def test_twins_that_do_not_fit_are_refused(tiny: Checkpoint, data: TabularDataset) -> None:
    with pytest.raises(BoundError, match="must be a 'deterministic' checkpoint, not 'lowrank'"):
        bound_report(tiny, data, twin=tiny)
    narrower = with_network(tiny, seed=0, kind=LayerKind.DETERMINISTIC, hidden=[16, 8])
    with pytest.raises(BoundError, match=r"layers \(in, out\) .* differ"):
        bound_report(tiny, data, twin=narrower)
    twin = with_network(tiny, seed=0, kind=LayerKind.DETERMINISTIC)
    shuffled = twin.manifest.preprocessing.model_copy(update={"numeric": twin.manifest.preprocessing.numeric[::-1]})
    other_inputs = dataclasses.replace(twin, manifest=twin.manifest.model_copy(update={"preprocessing": shuffled}))
    with pytest.raises(BoundError, match="input columns"):
        bound_report(tiny, data, twin=other_inputs)


@pytest.mark.parametrize("bad", [{"delta": 0.0}, {"delta": 1.0}, {"samples": 0}, {"points": 4}])
def test_bad_options_are_refused(tiny: Checkpoint, data: TabularDataset, bad: dict[str, float]) -> None:
    with pytest.raises(BoundError, match=next(iter(bad))):
        bound_report(tiny, data, **bad)  # type: ignore[arg-type]


def test_report_round_trips_through_json_and_renders(tiny: Checkpoint, data: TabularDataset) -> None:
    twin = with_network(tiny, seed=4, kind=LayerKind.DETERMINISTIC)
    report = bound_report(tiny, data, twin=twin, samples=SAMPLES, points=POINTS)
    assert BoundReport.from_dict(json.loads(json.dumps(report.as_dict()))) == report
    text = render_bound_markdown(report)
    assert text.startswith("## PAC-Bayes bound (McAllester, δ = 0.05)")
    assert "σ_{>r}" in text and ("**vacuous**" in text or "**non-vacuous**" in text)
    assert text.count("\n| ") == 1 + len(report.layers)  # header and one row per layer


def test_evaluate_and_the_card_carry_the_bound(tiny: Checkpoint, data: TabularDataset) -> None:
    result = evaluate(tiny, data, samples=8, seed=3)
    assert result["bound"] == bound_report(tiny, data, seed=3).as_dict()
    card = render_card(tiny.manifest, result)
    assert "## PAC-Bayes bound" in card and card.index("## PAC-Bayes bound") < card.index("## Limits")
    deterministic = with_network(tiny, seed=0, kind=LayerKind.DETERMINISTIC)
    assert "bound" not in evaluate(deterministic, data, samples=1, seed=0)


def test_cli_bound_on_the_bundled_model() -> None:
    result = CliRunner().invoke(cli, ["bound", str(BUNDLED), "--samples", "32"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "McAllester bound" in result.stdout and "status: vacuous" in result.stdout


def test_cli_bound_json_and_errors(tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["bound", str(tiny_checkpoint), "--json", "--samples", "8"])
    assert printed.exit_code == 0, printed.output
    report = json.loads(printed.stdout)
    assert report["kind"] == "lowrank" and report["samples"] == 8 and isinstance(report["vacuous"], bool)
    bad = runner.invoke(cli, ["bound", str(tiny_checkpoint), "--delta", "0"])
    assert bad.exit_code == 2 and "delta must be in (0, 1)" in bad.stderr
