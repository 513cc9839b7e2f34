"""SVD warm start: the factor means start at the twin's rank-r truncation; mismatched twins are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import BayesianMLP, LayerKind, NetworkSpec, svd_warm_start_
from app.bnn.pointestimate import DeterministicLinear
from app.data.tabular import load_table
from app.errors import WarmStartError
from app.train.config import TrainConfig
from app.train.pipeline import train_checkpoint

TWIN_CONFIG = TrainConfig(
    kind=LayerKind.DETERMINISTIC,
    hidden=[16, 16],
    epochs=2,
    kl_warmup_epochs=1,
    patience=1,
    val_samples=2,
    default_samples=8,
    seed=5,
)


def rank_truncation(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-r approximation U_r Σ_r V_rᵀ of weight (m, n)."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


def test_warm_started_means_are_the_twins_rank_r_truncation() -> None:
    generator = torch.Generator().manual_seed(0)
    twin = BayesianMLP(NetworkSpec(in_features=6, hidden=[20, 12], kind=LayerKind.DETERMINISTIC), generator=generator)
    for layer in twin.layers:  # something with a full spectrum and non-zero biases, as after training
        layer.bias.data.normal_(generator=generator)
    model = BayesianMLP(NetworkSpec(in_features=6, hidden=[20, 12], ranks=[3, 5, 1]), generator=generator)
    sigma_before = [layer.factor_a.rho.clone() for layer in model.layers]

    svd_warm_start_(model, twin)

    for layer, dense, rho in zip(model.layers, twin.layers, sigma_before, strict=True):
        assert isinstance(layer, LowRankBayesLinear) and isinstance(dense, DeterministicLinear)
        expected = rank_truncation(dense.weight[0].detach(), layer.rank)
        torch.testing.assert_close(layer.mean_weight(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.bias.mu.detach(), dense.bias[0].detach())
        assert torch.equal(layer.factor_a.rho, rho), "σ keeps its initial value"


def test_full_rank_warm_start_reproduces_the_twin_exactly() -> None:
    twin = BayesianMLP(NetworkSpec(in_features=4, hidden=[4], kind=LayerKind.DETERMINISTIC))
    model = BayesianMLP(NetworkSpec(in_features=4, hidden=[4], ranks=[4, 1]))
    svd_warm_start_(model, twin)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    means = [layer.mean_weight() for layer in model.layers]
    h = torch.relu(x @ means[0].T + model.layers[0].bias.mu)
    logits = h @ means[1].T + model.layers[1].bias.mu
    torch.testing.assert_close(logits, twin(x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [k for k in LayerKind if k is not LayerKind.LOWRANK])
def test_warm_start_is_refused_for_non_lowrank_kinds(kind: LayerKind) -> None:
    with pytest.raises(ValidationError, match="lowrank"):
        TrainConfig(kind=kind, warm_start="runs/twin")
    twin = BayesianMLP(NetworkSpec(in_features=3, hidden=[4], kind=LayerKind.DETERMINISTIC))
    with pytest.raises(ValueError, match="'lowrank' network"):
        svd_warm_start_(BayesianMLP(NetworkSpec(in_features=3, hidden=[4], kind=kind)), twin)


def test_warm_start_refuses_a_twin_of_another_kind_or_shape() -> None:
    model = BayesianMLP(NetworkSpec(in_features=3, hidden=[4]))
    with pytest.raises(ValueError, match="'deterministic' twin"):
        svd_warm_start_(model, BayesianMLP(NetworkSpec(in_features=3, hidden=[4], kind=LayerKind.FULLRANK)))
    with pytest.raises(ValueError, match="differ"):
        svd_warm_start_(model, BayesianMLP(NetworkSpec(in_features=3, hidden=[5], kind=LayerKind.DETERMINISTIC)))


@pytest.fixture(scope="module")
def twin_folder(table_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_table(table_files[0], "outcome", seed=0)
    out = tmp_path_factory.mktemp("twin") / "deterministic"
    train_checkpoint(data, TWIN_CONFIG, out)
    return out


def test_pipeline_warm_starts_from_a_matching_twin(
    twin_folder: Path, table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    data = load_table(table_files[0], "outcome", seed=0)
    config = TWIN_CONFIG.model_copy(update={"kind": LayerKind.LOWRANK, "rank": 4, "warm_start": str(twin_folder)})
    manifest, result = train_checkpoint(data, config, tmp_path / "warm")
    assert manifest.training.config["warm_start"] == str(twin_folder)
    assert result.model.spec.kind is LayerKind.LOWRANK


def test_pipeline_refuses_a_twin_with_other_preprocessing(
    twin_folder: Path, table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    other_split = load_table(table_files[0], "outcome", seed=1)  # another training split: other medians and scales
    config = TWIN_CONFIG.model_copy(update={"kind": LayerKind.LOWRANK, "rank": 4, "warm_start": str(twin_folder)})
    with pytest.raises(WarmStartError, match="preprocessing differs"):
        train_checkpoint(other_split, config, tmp_path / "warm")
    fewer = load_table(table_files[0], "outcome", features=["x1", "x2"], seed=0)
    with pytest.raises(WarmStartError, match="features"):
        train_checkpoint(fewer, config, tmp_path / "warm")
    wider = config.model_copy(update={"hidden": [16, 32]})
    with pytest.raises(WarmStartError, match="hidden widths"):
        train_checkpoint(load_table(table_files[0], "outcome", seed=0), wider, tmp_path / "warm")


def test_pipeline_refuses_a_twin_that_is_not_deterministic(
    tiny_checkpoint: Path, table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    data = load_table(table_files[0], "outcome", seed=0)
    config = TWIN_CONFIG.model_copy(update={"kind": LayerKind.LOWRANK, "warm_start": str(tiny_checkpoint)})
    with pytest.raises(WarmStartError, match="'deterministic' checkpoint"):
        train_checkpoint(data, config, tmp_path / "warm")
