from __future__ import annotations

import numpy as np
import pytest
import torch

from app.bnn.recurrent import BayesianLSTM
from app.bnn.spec import LayerKind, Likelihood
from app.train.config import TrainConfig
from app.train.sequence_loop import build_sequence_spec, train_sequence


def _sequences(rows: int, seed: int, steps: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded sequences of 2 features; the target is feature 0 at the last valid step (not a padded one)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, size=rows)
    x = rng.normal(size=(rows, steps, 2)).astype(np.float32)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    y = x[np.arange(rows), lengths - 1, 0].astype(np.float64)
    return x, lengths.astype(np.int64), y


def _config(kind: LayerKind = LayerKind.LOWRANK, **extra: object) -> TrainConfig:
    options = {"kind": kind, "hidden": [8], "rank": 3, "epochs": 30, "kl_warmup_epochs": 2, "patience": 30}
    return TrainConfig(**{**options, "batch_size": 32, "val_samples": 8, "device": "cpu", **extra})


def test_the_spec_follows_the_config() -> None:
    spec = build_sequence_spec(_config(hidden=[16, 16], rank=4), in_features=5, classes=None)
    assert (spec.layers, spec.hidden, spec.likelihood, spec.head_features) == (2, 16, Likelihood.GAUSSIAN, 2)
    assert spec.map_ranks() == [4, 4, 4, 4, 2]  # every gate map at the rank, the H × 2 head at full rank
    assert build_sequence_spec(_config(), 5, classes=2).likelihood is Likelihood.BERNOULLI
    assert build_sequence_spec(_config(), 5, classes=3).out_features == 3
    assert build_sequence_spec(_config(LayerKind.FULLRANK), 5, None).ranks is None
    with pytest.raises(ValueError, match="share one width"):
        build_sequence_spec(_config(hidden=[16, 8]), 5, None)


def test_a_regression_learns_the_last_valid_step() -> None:
    x, lengths, y = _sequences(600, seed=0)
    xv, lv, yv = _sequences(200, seed=1)
    result = train_sequence(x, lengths, y, xv, lv, yv, None, _config())
    assert isinstance(result.model, BayesianLSTM) and not result.model.training
    assert 2 <= result.best_epoch <= result.epochs_run
    assert result.best_val_nll == min(log.val_nll for log in result.history[1:])  # kept epochs: after warm-up
    with torch.no_grad():
        head = result.model(torch.as_tensor(xv), torch.as_tensor(lv), samples=16)
    rmse = float(np.sqrt(((head[..., 0].mean(0).numpy() - yv) ** 2).mean()))
    assert rmse < 0.75 * float(yv.std())  # well below predicting the mean (0.58 measured)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_kind_trains_a_classifier(kind: LayerKind) -> None:
    x, lengths, y = _sequences(200, seed=2)
    labels = (y > 0).astype(np.int64)
    xv, lv, yv = _sequences(80, seed=3)
    config = _config(kind, epochs=3, kl_warmup_epochs=1, members=2)
    result = train_sequence(x, lengths, labels, xv, lv, (yv > 0).astype(np.int64), 2, config)
    assert result.epochs_run == 3 and np.isfinite(result.best_val_nll)
    assert result.model.spec.kind is kind


def test_training_is_reproducible() -> None:
    x, lengths, y = _sequences(100, seed=4)
    first = train_sequence(x, lengths, y, x, lengths, y, None, _config(epochs=2, kl_warmup_epochs=1))
    second = train_sequence(x, lengths, y, x, lengths, y, None, _config(epochs=2, kl_warmup_epochs=1))
    assert [log.val_nll for log in first.history] == [log.val_nll for log in second.history]


def test_bad_targets_and_a_warm_start_are_refused() -> None:
    x, lengths, y = _sequences(40, seed=5)
    y[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        train_sequence(x, lengths, y, x, lengths, y, None, _config(epochs=1, kl_warmup_epochs=0))
    with pytest.raises(ValueError, match="SVD warm start is for MLPs"):
        train_sequence(x, lengths, y, x, lengths, y, None, _config(epochs=1, kl_warmup_epochs=0, warm_start="m"))
