"""A missing category on the wire: its own level where training had missing values, else referred by the gate.

The bundled flchain model never saw a missing ``sex``: a null is answered, and referred (support), as an unseen
category is. A tiny model trained on a table whose ``site`` has gaps encodes a null ``site`` as its missing level
and scores it like any known category.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from app.checkpoint.files import read_manifest
from app.data.preprocess import MISSING_LEVEL
from app.serve.settings import Settings
from app.train.config import TrainConfig

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/{}/predict"
INFER = "/v2/models/{}/infer"


@pytest.fixture(scope="module")
def gappy_repository(
    tmp_path_factory: pytest.TempPathFactory, table_files: tuple[Path, Path], tiny_config: TrainConfig
) -> Path:
    """A model repository holding "gappy": the tiny model trained on the synthetic table with every 8th site
    missing."""
    from app.data.tabular import load_table
    from app.train.pipeline import train_checkpoint

    folder = tmp_path_factory.mktemp("gappy")
    frame = pd.read_csv(table_files[0])
    frame.loc[frame.index % 8 == 0, "site"] = None
    frame.to_csv(folder / "gappy.csv", index=False)
    root = folder / "models"
    train_checkpoint(load_table(folder / "gappy.csv", "outcome", seed=0), tiny_config, root / "gappy")
    return root


def test_the_gappy_model_has_a_missing_level(gappy_repository: Path) -> None:
    manifest = read_manifest(gappy_repository / "gappy")
    (site,) = manifest.preprocessing.categorical
    assert site.missing_level and site.levels[-1] == MISSING_LEVEL
    assert next(f for f in manifest.features if f.name == "site").missing_allowed


async def test_a_null_category_is_its_own_level_where_training_had_gaps(
    gappy_repository: Path, app_client: Callable[[Settings], Any], to_v2: Callable[..., list[dict[str, Any]]]
) -> None:
    rows = [{"x1": 0.1, "x2": -0.2, "site": site} for site in (None, "north", "west")]
    async with app_client(Settings(models=gappy_repository, device="cpu")) as client:
        v1 = await client.post(PREDICT.format("gappy"), json={"instances": rows, "seed": 4})
        v2 = await client.post(
            INFER.format("gappy"), json={"inputs": to_v2(rows, {"site": "BYTES"}), "parameters": {"seed": 4}}
        )
    assert v1.status_code == 200, v1.text
    missing, known, unseen = v1.json()["predictions"]
    assert "support:site" not in missing["reasons"] and missing["probabilities"] is not None
    assert "support:site" not in known["reasons"]
    assert "support:site" in unseen["reasons"]  # a category never seen is still referred
    assert missing["probabilities"] != known["probabilities"]  # the missing level is an input of its own
    assert v2.status_code == 200, v2.text
    reasons = next(o for o in v2.json()["outputs"] if o["name"] == "reasons")["data"]
    assert ["support:site" in r for r in reasons] == [False, False, True]


async def test_a_null_category_never_missing_in_training_is_referred(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: Callable[..., list[dict[str, Any]]]
) -> None:
    rows = [{**flchain_row, "sex": None}, flchain_row]
    v1 = await asgi_client.post(PREDICT.format("flchain-mortality"), json={"instances": rows, "samples": 8})
    assert v1.status_code == 200, v1.text
    referred, normal = v1.json()["predictions"]
    assert referred["decision"] == "refer" and "support:sex" in referred["reasons"]
    assert referred["gate"]["support"]["flag"] is True
    assert "sex is missing, which it never was in training" in referred["details"]
    assert "support:sex" not in normal["reasons"]
    v2 = await asgi_client.post(
        INFER.format("flchain-mortality"), json={"inputs": to_v2(rows), "parameters": {"samples": 8}}
    )
    assert v2.status_code == 200, v2.text
    decisions = next(o for o in v2.json()["outputs"] if o["name"] == "decision")["data"]
    assert decisions[0] == "refer"
