"""NUTS on the singular posterior (app/mcmc): the diagnostics see through the factors' non-identifiability,
and a tiny `sbnn mcmc` runs end to end (the reported run is bench/results/mcmc.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pyro")
pytest.importorskip("pandas")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from app.cli import app  # noqa: E402
from app.mcmc.diagnostics import convergence, identifiable_quantities  # noqa: E402
from app.mcmc.model import MCMCNetwork  # noqa: E402


def _draws_rotated_per_chain(chains: int = 4, draws: int = 200) -> tuple[MCMCNetwork, dict[str, torch.Tensor]]:
    """Chains that agree on W = A·Bᵀ but each sit at its own A·G, B·G⁻ᵀ (the singular posterior's ridge)."""
    generator = torch.Generator().manual_seed(0)
    network = MCMCNetwork(in_features=5, hidden=6, rank=2)
    a, b = torch.randn(6, 2, generator=generator), torch.randn(5, 2, generator=generator)
    sites: dict[str, list[torch.Tensor]] = {k: [] for k in ("hidden.A", "hidden.B", "out.A", "out.B")}
    sites |= {"hidden.bias": [], "out.bias": []}
    for _ in range(chains):
        g = torch.randn(2, 2, generator=generator) * 2 + torch.eye(2) * 3
        noise = 0.01 * torch.randn(draws, 6, 2, generator=generator)
        sites["hidden.A"].append((a @ g)[None] + noise)
        sites["hidden.B"].append((b @ torch.linalg.inv(g).T)[None].expand(draws, -1, -1))
        sites["out.A"].append(torch.ones(draws, 1, 1) + 0.01 * torch.randn(draws, 1, 1, generator=generator))
        sites["out.B"].append(torch.ones(draws, 6, 1))
        sites["hidden.bias"].append(0.01 * torch.randn(draws, 6, generator=generator))
        sites["out.bias"].append(0.01 * torch.randn(draws, 1, generator=generator))
    return network, {k: torch.stack(v) for k, v in sites.items()}


def test_rhat_flags_the_factors_and_passes_what_they_identify() -> None:
    network, by_chain = _draws_rotated_per_chain()
    groups = identifiable_quantities(network, by_chain, torch.randn(30, 5, generator=torch.Generator().manual_seed(1)))
    assert set(groups) == {"raw factors", "W", "singular values", "held-out probabilities"}
    assert groups["W"].shape == (4, 200, 6 * 5 + 6) and groups["held-out probabilities"].shape == (4, 200, 30)
    raw, w = convergence(groups["raw factors"]), convergence(groups["W"])
    assert raw.rhat_max > 2.0  # every chain at its own G: the factors disagree
    assert w.rhat_max < 1.1 and convergence(groups["singular values"]).rhat_max < 1.1
    assert convergence(groups["held-out probabilities"]).rhat_max < 1.1
    assert raw.n == 6 * 2 + 5 * 2 + 1 + 6 and w.ess_min > raw.ess_min


def test_a_tiny_mcmc_run_writes_its_report(tmp_path: Path) -> None:
    options = ["--rows", "60", "--hidden", "4", "--chains", "2", "--warmup", "8", "--samples", "8"]
    result = CliRunner().invoke(app, ["mcmc", "--out", str(tmp_path), *options, "--vi-epochs", "2"])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "mcmc.json").read_text())
    for kind in ("nuts_lowrank", "nuts_fullrank"):
        convergence_of = found[kind]["convergence"]
        assert set(convergence_of) == {"raw factors", "W", "singular values", "held-out probabilities"}
        assert len(found[kind]["divergences"]) == 2
        assert 0.0 < found[kind]["test"]["nll"] < 5.0
    assert set(found["vi"]["ood_auroc"]) == set(found["nuts_lowrank"]["ood_auroc"]) and found["vi"]["ood_auroc"]
    assert "## Convergence" in (tmp_path / "mcmc.md").read_text()
