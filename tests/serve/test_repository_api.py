"""Model versions side by side, the version policy, the repository API (index, load, unload) and readiness that
says which models are not ready and why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import LIMITS, in_process, v2_inputs

from app.checkpoint.files import sha256_bytes
from app.checkpoint.io import load_checkpoint, weights_bytes
from app.serve.app import create_app
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio
TINY_ROW = {"x1": 0.3, "x2": -0.2, "site": "north"}
INFER_BODY = {"inputs": v2_inputs([TINY_ROW], {"site": "BYTES"}), "parameters": {"seed": 3}}


def write_version(source: Path, target: Path, version: str, shift: float = 0.0) -> str:
    """A copy of the checkpoint at ``source`` as ``version`` in ``target``; ``shift`` moves every weight mean
    (new weights, the manifest's sha256 rewritten to match). Returns the weights' sha256."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    if shift:
        model = load_checkpoint(source).model
        for name, parameter in model.named_parameters():
            if name.endswith(".mu"):
                parameter.data += shift
        data = weights_bytes(model)
        (target / manifest["weights"]["file"]).write_bytes(data)
        manifest["weights"] |= {"sha256": sha256_bytes(data), "bytes": len(data)}
        manifest["onnx"] = None  # the exported graph holds the old weights
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest["weights"]["sha256"]


@pytest.fixture
def versioned(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A repository with tiny in versions 1 and 2 (new weights) and flchain-mortality in one checkpoint."""
    root = tmp_path / "models"
    write_version(tiny_checkpoint, root / "tiny" / "1", "1")
    write_version(tiny_checkpoint, root / "tiny" / "2", "2", shift=0.01)
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "flchain-mortality", root / "flchain-mortality")
    return root


def _settings(root: Path, **options: Any) -> Settings:
    return Settings(models=root, device="cpu", **(LIMITS | {"ready_when": "all"} | options))


async def _infer(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.post(path, json=INFER_BODY)


async def test_latest_serves_the_highest_version_and_the_index_lists_the_other(
    versioned: Path, app_client: Callable[[Settings], Any]
) -> None:
    async with app_client(_settings(versioned)) as client:
        answer = await _infer(client, "/v2/models/tiny/infer")
        assert answer.status_code == 200 and answer.json()["model_version"] == "2"
        old = await _infer(client, "/v2/models/tiny/versions/1/infer")
        assert old.status_code == 404 and "tiny/versions/1" in old.json()["error"]
        index = (await client.get("/v2/repository/index")).json()
        tiny = {e["version"]: e for e in index if e["name"] == "tiny"}
        assert tiny["2"]["state"] == "READY" and tiny["1"]["state"] == "UNAVAILABLE"
        assert "version policy" in tiny["1"]["reason"]
        assert [e["name"] for e in (await client.get("/v2/repository/index?ready=true")).json()] == [
            "flchain-mortality",
            "tiny",
        ]


async def test_all_serves_every_version_at_its_own_path(versioned: Path, app_client: Callable[[Settings], Any]) -> None:
    async with app_client(_settings(versioned, version_policy="all")) as client:
        one, two = [(await _infer(client, f"/v2/models/tiny/versions/{v}/infer")).json() for v in ("1", "2")]
        assert (one["model_version"], two["model_version"]) == ("1", "2")
        assert one["parameters"]["model_sha256"] != two["parameters"]["model_sha256"]
        assert (await _infer(client, "/v2/models/tiny/infer")).json()["model_version"] == "2"  # the highest
        metadata = (await client.get("/v2/models/tiny")).json()
        assert metadata["versions"] == ["1", "2"]
        assert (await client.get("/v2/models/tiny/versions/1/ready")).status_code == 200


def after_loading(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """A client on a new in-process app once its start-up load is done, ready or not (``client.app``: the app)."""
    return in_process(settings, ready=False)


async def test_a_pin_serves_that_version_and_a_missing_pin_is_not_ready(
    versioned: Path, app_client: Callable[[Settings], Any]
) -> None:
    async with app_client(_settings(versioned, pinned_versions={"tiny": ["1"]})) as client:
        assert (await _infer(client, "/v2/models/tiny/infer")).json()["model_version"] == "1"
    async with after_loading(_settings(versioned, pinned_versions={"tiny": ["1", "7"]})) as client:
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models"] == [
            {"name": "tiny", "version": "7", "state": "failed", "reason": "pinned version not found"}
        ]
        assert (await _infer(client, "/v2/models/tiny/versions/1/infer")).status_code == 200  # 1 serves alone


async def test_readiness_names_the_failed_models_and_why(model_repository: Path) -> None:
    """Every model asked for must be ready (the default, SBNN_READY_WHEN=all); the 503 says which is not."""
    async with after_loading(_settings(model_repository)) as client:
        answer = await client.get("/v2/health/ready")
    assert answer.status_code == 503
    body = answer.json()
    assert body["ready"] is False and body["reason"] == "1 model versions not ready (1 failed)"
    (broken,) = body["models"]
    assert broken["name"] == "broken" and broken["state"] == "failed" and "sha256" in broken["reason"]


async def test_an_empty_repository_is_never_ready(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for ready_when in ("all", "any"):
        async with after_loading(_settings(tmp_path / "empty", ready_when=ready_when)) as client:
            answer = await client.get("/v2/health/ready")
        assert answer.status_code == 503
        assert answer.json() == {
            "ready": False,
            "reason": "the model repository 'empty' holds no model folder",
            "models": [],
        }


def test_a_missing_repository_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        create_app(_settings(tmp_path / "modles"))


async def test_load_swaps_in_new_weights_and_a_failed_reload_keeps_the_old(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    old_sha = write_version(tiny_checkpoint, root / "tiny", "1")
    async with after_loading(_settings(root)) as client:
        assert (await _infer(client, "/v2/models/tiny/infer")).json()["parameters"]["model_sha256"] == old_sha
        shutil.rmtree(root / "tiny")
        new_sha = write_version(tiny_checkpoint, root / "tiny", "2", shift=0.01)
        loaded = await client.post("/v2/repository/models/tiny/load")
        assert loaded.status_code == 200 and loaded.json() == {"name": "tiny", "versions": ["2"]}
        assert (await _infer(client, "/v2/models/tiny/infer")).json()["parameters"]["model_sha256"] == new_sha

        weights = root / "tiny" / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # modified after hashing: refused
        refused = await client.post("/v2/repository/models/tiny/load")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert "sha256" in error and "version 2 keeps serving" in error
        assert (await _infer(client, "/v2/models/tiny/infer")).json()["parameters"]["model_sha256"] == new_sha
        assert (await client.get("/v2/health/ready")).status_code == 200  # what was asked for still serves
        (entry,) = (await client.get("/v2/repository/index")).json()
        assert entry["state"] == "READY" and "keeps serving" in entry["reason"]
        metrics = (await client.get("/metrics")).text
        assert 'sbnn_model_loads_total{model="tiny",result="kept"} 1.0' in metrics
        assert 'sbnn_model_loads_total{model="tiny",result="loaded"} 1.0' in metrics


async def test_requests_queued_before_a_swap_finish_on_the_version_they_started_with(
    tiny_checkpoint: Path, tmp_path: Path, hold_compute: Callable[[Any], Any]
) -> None:
    root = tmp_path / "models"
    old_sha = write_version(tiny_checkpoint, root / "tiny", "1")
    async with after_loading(_settings(root)) as client:
        with hold_compute(client.app.state.dataplane.engine) as release:  # type: ignore[attr-defined]
            async with anyio.create_task_group() as group:
                answers: list[httpx.Response] = []

                async def send() -> None:
                    answers.append(await _infer(client, "/v2/models/tiny/infer"))

                for _ in range(3):
                    group.start_soon(send)
                await anyio.sleep(0.3)  # queued behind the held compute thread
                shutil.rmtree(root / "tiny")
                new_sha = write_version(tiny_checkpoint, root / "tiny", "2", shift=0.01)
                assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200  # while they wait
                group.start_soon(send)
                await anyio.sleep(0.3)
                release.set()
        shas = [a.json()["parameters"]["model_sha256"] for a in answers]
        assert sorted(shas) == sorted([old_sha] * 3 + [new_sha]), shas
        assert shas[-1] == new_sha  # the request sent after the swap ran on the new weights


async def test_unload_takes_a_model_out_and_load_brings_it_back(versioned: Path) -> None:
    async with after_loading(_settings(versioned)) as client:
        assert (await client.post("/v2/repository/models/tiny/unload", json={"parameters": {}})).json() == {}
        gone = await _infer(client, "/v2/models/tiny/infer")
        assert gone.status_code == 503 and "unloaded" in gone.json()["error"]
        listed = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
        assert listed["tiny"]["state"] == "unloaded" and listed["tiny"]["ready"] is False
        assert (await client.get("/v1/models/tiny")).json()["state"] == "unloaded"
        assert (await client.get("/v2/health/ready")).status_code == 200  # an unloaded model was not asked for
        assert (await client.post("/v2/repository/models/tiny/load")).json()["versions"] == ["2"]
        assert (await _infer(client, "/v2/models/tiny/infer")).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v2/repository/models/nope/load", None, 404, None),
        ("/v2/repository/models/tiny/load", {"parameters": {"config": "{}"}}, 400, "parameters.config"),
        ("/v2/repository/models/tiny/unload", {"parameters": {"unload_dependents": True, "x": 1}}, 400, "parameters.x"),
        ("/v2/repository/index", {"repository_name": "elsewhere"}, 400, "repository_name"),
        ("/v2/repository/index", {"ready": "maybe"}, 400, "ready"),
    ],
)
async def test_repository_requests_it_cannot_honour_are_refused(
    versioned: Path, app_client: Callable[[Settings], Any], path: str, body: Any, status: int, field: str | None
) -> None:
    async with app_client(_settings(versioned)) as client:
        answer = await client.post(path, json=body)
    assert answer.status_code == status, answer.text
    if field:
        assert field in answer.json()["error"]
