"""Training: loss pieces, schedule, determinism, every kind, gate calibration, train → save → load → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.bnn.network import LayerKind, Likelihood
from app.checkpoint.io import load_checkpoint
from app.data.dataset import load_dataset
from app.data.tabular import load_table
from app.evaluate.evaluate import evaluate, write_evaluation
from app.train.config import ClassWeight, TrainConfig
from app.train.loop import build_spec, class_weights, kl_weight, nll_loss, train


def small_problem(rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


def test_kl_weight_anneals_linearly_then_holds() -> None:
    config = TrainConfig(beta=0.5, kl_warmup_epochs=10)
    assert [kl_weight(config, e) for e in (1, 5, 10, 50)] == [0.05, 0.25, 0.5, 0.5]
    assert kl_weight(TrainConfig(beta=0.3, kl_warmup_epochs=0), 1) == 0.3


def test_balanced_class_weights_upweight_the_rare_class() -> None:
    y = np.array([0] * 90 + [1] * 10)
    w = class_weights(y, 2, ClassWeight.BALANCED)
    torch.testing.assert_close(w, torch.tensor([100 / 180, 100 / 20]))
    assert class_weights(y, 2, ClassWeight.NONE) is None


def test_nll_loss_matches_manual_weighted_bce() -> None:
    logits = torch.tensor([[[0.3], [-1.2], [2.0]]])
    y = torch.tensor([1, 0, 1])
    weights = torch.tensor([0.5, 5.0])
    manual = -(
        torch.tensor([5.0, 0.5, 5.0])
        * torch.where(y == 1, F.logsigmoid(logits[0, :, 0]), F.logsigmoid(-logits[0, :, 0]))
    ).mean()
    torch.testing.assert_close(nll_loss(logits, y, Likelihood.BERNOULLI, weights), manual)
    three = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        nll_loss(three, y, Likelihood.CATEGORICAL, None), F.cross_entropy(three.reshape(-1, 3), y.repeat(2))
    )


def test_same_seed_trains_identical_weights() -> None:
    x, y = small_problem()
    config = TrainConfig(hidden=[8], rank=3, epochs=3, kl_warmup_epochs=1, patience=2, val_samples=4, seed=11)
    a = train(x[:200], y[:200], x[200:], y[200:], 2, config)
    b = train(x[:200], y[:200], x[200:], y[200:], 2, config)
    for ta, tb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(ta, tb)
    c = train(x[:200], y[:200], x[200:], y[200:], 2, config.model_copy(update={"seed": 12}))
    assert not torch.equal(next(iter(a.model.state_dict().values())), next(iter(c.model.state_dict().values())))


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_kind_learns_an_easy_task(kind: LayerKind) -> None:
    # β is lowered: with a few hundred rows the paper's β = 0.5 lets the KL pull weights onto the prior.
    x, y = small_problem(400)
    config = TrainConfig(
        kind=kind,
        hidden=[16],
        rank=4,
        epochs=15,
        kl_warmup_epochs=2,
        patience=15,
        val_samples=8,
        lr=1e-2,
        beta=0.02,
        seed=0,
    )
    result = train(x[:300], y[:300], x[300:], y[300:], 2, config)
    assert result.model.spec.kind is kind
    baseline = -np.log(0.5)
    assert result.best_val_nll < 0.8 * baseline, f"{kind.value} did not learn: {result.best_val_nll:.3f}"
    assert result.history[0].epoch == 1 and result.epochs_run == len(result.history)


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = small_problem()
    config = TrainConfig(hidden=[8], rank=3, epochs=200, kl_warmup_epochs=1, patience=3, val_samples=4, lr=5e-2)
    result = train(x[:200], y[:200], x[200:], y[200:], 2, config)
    assert result.epochs_run < 200
    assert result.best_val_nll == min(log.val_nll for log in result.history)
    assert result.epochs_run - result.best_epoch <= 3


def test_build_spec_uses_paper_ranks_capped_by_layer() -> None:
    spec = build_spec(TrainConfig(), in_features=9, classes=2)
    assert spec.layer_ranks() == [9, 15, 1]
    assert spec.likelihood is Likelihood.BERNOULLI and spec.out_features == 1
    multi = build_spec(TrainConfig(kind=LayerKind.FULLRANK), in_features=9, classes=4)
    assert multi.out_features == 4 and multi.likelihood is Likelihood.CATEGORICAL


def test_train_save_load_evaluate_end_to_end(tiny_checkpoint: Path, tiny_config: TrainConfig) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    manifest = checkpoint.manifest
    assert manifest.training.config == json.loads(tiny_config.model_dump_json())
    assert manifest.data.source.startswith("csv:")
    data = load_dataset(manifest.data)
    result = evaluate(checkpoint, data, seed=0)
    assert result["test"]["auroc"] > 0.8  # the synthetic task is easy
    assert set(result["ood"]) == {"ood-file"}
    # The shifted file has no labels: OOD metrics only, and a 4-sigma shift is easy to see.
    assert "classification" not in result["ood"]["ood-file"]
    assert result["ood"]["ood-file"]["mutual_information"]["auroc"] > 0.7
    assert evaluate(checkpoint, data, seed=0) == result, "same seed, same numbers"
    written = write_evaluation(checkpoint, data, result)
    assert {p.name for p in written} == {"metrics.json", "reliability.png", "ood_scores.png", "card.md"}
    reloaded = load_checkpoint(tiny_checkpoint)
    assert reloaded.manifest.metrics["test"] == result["test"]
    card = (tiny_checkpoint / "card.md").read_text()
    assert "## Intended use" in card and "OOD gate" in card and f"{result['test']['auroc']:.3f}" in card


def test_load_dataset_refuses_changed_data(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from app.errors import DataError

    manifest = load_checkpoint(tiny_checkpoint).manifest
    moved = tmp_path / "cohort.csv"
    moved.write_text(Path(manifest.data.options["path"]).read_text().replace("north", "west", 1))
    with pytest.raises(DataError, match="changed"):
        load_dataset(manifest.data, str(moved))


def test_multiclass_user_table_trains(table_files: tuple[Path, Path]) -> None:
    from app.data.preprocess import Preprocessing

    data = load_table(table_files[0], "site", features=["x1", "x2", "outcome"], seed=0)
    assert data.labels == ["east", "north", "south"]
    prep = Preprocessing.fit(data.train.frame, data.features)
    config = TrainConfig(hidden=[8], rank=2, epochs=2, kl_warmup_epochs=0, patience=1, val_samples=2)
    result = train(
        prep.transform(data.train.frame), data.train.y, prep.transform(data.val.frame), data.val.y, 3, config
    )
    assert result.model.spec.out_features == 3
    assert np.isfinite(result.best_val_nll)


def test_progress_callbacks_change_nothing(
    tiny_checkpoint: Path, tiny_config: TrainConfig, table_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from app.evaluate.evaluate import score_sets
    from app.train.pipeline import train_checkpoint

    data = load_table(table_files[0], "outcome", ood_path=table_files[1], seed=0)
    steps: list[str] = []
    manifest, _ = train_checkpoint(data, tiny_config, tmp_path / "m", on_epoch=lambda log: None, on_step=steps.append)
    quiet = load_checkpoint(tiny_checkpoint).manifest  # the same run without callbacks
    assert manifest.weights.sha256 == quiet.weights.sha256 and manifest.gate.achieved == quiet.gate.achieved
    assert any("scoring the validation split" in s for s in steps) and any("OOD set ood-file" in s for s in steps)

    checkpoint, heard = load_checkpoint(tiny_checkpoint), []
    scored = score_sets(checkpoint, data, samples=8, on_step=heard.append)
    assert evaluate(checkpoint, data, scored=scored, on_step=heard.append) == evaluate(checkpoint, data, scored=scored)
    assert heard[0].startswith("scoring the test split") and any(s.startswith("PAC-Bayes bound: KL") for s in heard)
