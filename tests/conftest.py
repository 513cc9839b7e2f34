"""Shared fixtures: a small synthetic table and a tiny trained checkpoint built from it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.train.config import TrainConfig

# Apps under test serve no gRPC unless a test asks for it (a fixed default port would clash between apps).
os.environ.setdefault("SBNN_GRPC_PORT", "0")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "flchain-mortality"


def synthetic_table(rows: int = 600, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A learnable binary task: numeric x1, x2 (x2 with gaps), categorical site; y depends on x1 + x2."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    site = rng.choice(["north", "south", "east"], rows)
    logit = 2.0 * x1 - 1.5 * x2 + (site == "east") * 0.8
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(int)
    x2_with_gaps = np.where(rng.uniform(size=rows) < 0.1, np.nan, x2)
    return pd.DataFrame({"x1": x1, "x2": x2_with_gaps, "site": site, "outcome": np.where(y == 1, "yes", "no")})


TINY_CONFIG = TrainConfig(
    hidden=[16, 16], rank=4, epochs=6, kl_warmup_epochs=2, patience=3, default_samples=64, val_samples=8, seed=3
)


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def table_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tables")
    train, shifted = folder / "cohort.csv", folder / "shifted.csv"
    synthetic_table().to_csv(train, index=False)
    synthetic_table(rows=200, seed=1, shift=4.0).drop(columns="outcome").to_csv(shifted, index=False)
    return train, shifted


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, table_files: tuple[Path, Path]) -> Path:
    """A lowrank checkpoint trained for a few epochs on the synthetic table (built once per session)."""
    from app.data.tabular import load_table
    from app.train.pipeline import train_checkpoint

    data = load_table(table_files[0], "outcome", ood_path=table_files[1], seed=0)
    out = tmp_path_factory.mktemp("models") / "tiny"
    train_checkpoint(data, TINY_CONFIG, out)
    return out


@pytest.fixture
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    target = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, target)
    return target
