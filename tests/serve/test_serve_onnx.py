"""The onnxruntime backend: a server that cannot import torch answers /v1 and /v2 as the torch backend does:
the bank with the same numbers, fresh samples (seeded, replayable, adaptive) from the sampling graph, and
local reparameterisation (what a seeded request on a few rows runs) from the local graph."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.checkpoint.io import load_checkpoint
from app.checkpoint.onnx_export import export_onnx
from app.serve.app import create_app
from app.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
# In distribution, rejected (creatinine in µmol/L: beyond the plausible 30 mg/dL), missing creatinine, and
# referred (age 95: outside the training range).
ROWS = [ROW, {**ROW, "creatinine": 88.4}, {**ROW, "age": 55, "sex": "M", "creatinine": None}, {**ROW, "age": 95}]

# Runs in a fresh interpreter where `import torch` fails: the whole serving path must do without it.
TORCH_FREE_CLIENT = """
import asyncio, json, sys
sys.modules["torch"] = None
import httpx
from app.serve.app import create_app
from app.serve.settings import Settings

async def main():
    app = create_app(Settings(models=sys.argv[1], backend="onnx"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://onnx") as client:
            for _ in range(200):
                if (await client.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            rows = json.loads(sys.argv[2])
            first = await client.post("/v1/models/flchain-mortality/predict", json={"instances": rows})
            inputs = [{"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "sex" else "FP64",
                       "data": [r[k] for r in rows]} for k in rows[0]]
            v2 = await client.post("/v2/models/flchain-mortality/infer", json={"inputs": inputs})
            async def v1(body):
                response = await client.post("/v1/models/flchain-mortality/predict", json={"instances": rows, **body})
                return [response.status_code, response.json()]

            v2_fresh = await client.post("/v2/models/flchain-mortality/infer",
                                         json={"inputs": inputs, "parameters": {"sampler": "fresh", "seed": 2}})
            answers = {
                "fresh": await v1({"sampler": "fresh", "seed": 1}),
                "fresh_again": await v1({"sampler": "fresh", "seed": 1}),
                "seeded_auto": await v1({"seed": 7}),
                "many": await v1({"samples": 4096, "seed": 3}),
                "adaptive": await v1({"tolerance": 0.01, "seed": 5}),
                "local": await v1({"sampler": "local", "seed": 1}),
                "local_again": await v1({"sampler": "local", "seed": 1}),
                "local_many": await v1({"sampler": "local", "samples": 4096, "seed": 3}),
                "fresh_adaptive": await v1({"sampler": "fresh", "tolerance": 0.01, "seed": 5}),
                "bank_seed": await v1({"sampler": "bank", "seed": 3}),
                "unseeded_fresh": await v1({"sampler": "fresh"}),
                "v2_fresh": [v2_fresh.status_code, v2_fresh.json()],
            }
            older = await client.post("/v1/models/older-export/predict",
                                      json={"instances": rows, "sampler": "local", "seed": 1})
            answers["older_local"] = [older.status_code, older.json()]
            models = await client.get("/v1/models")
            print(json.dumps({"v1": [first.status_code, first.json()], "v2": [v2.status_code, v2.json()], **answers,
                              "models": models.json(), "torch_imported": sys.modules.get("torch") is not None}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("onnx-models")
    folder = repository / "flchain-mortality"
    shutil.copytree(ROOT / "models" / "flchain-mortality", folder)
    export_onnx(load_checkpoint(folder), seed=0)
    broken = repository / "broken-onnx"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["name"] = "broken-onnx"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    older = repository / "older-export"  # as exported before the local graph existed
    shutil.copytree(folder, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["name"] = "older-export"
    manifest["onnx"]["local"] = None
    (older / "manifest.json").write_text(json.dumps(manifest))
    (older / "model-local.onnx").unlink()
    return repository


def test_torch_free_server_matches_the_torch_backend(onnx_repository: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_CLIENT, str(onnx_repository), json.dumps(ROWS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["torch_imported"] is False
    states = {m["name"]: m for m in out["models"]["models"]}
    assert states["flchain-mortality"]["state"] == "ready"
    assert states["broken-onnx"]["state"] == "failed" and "sha256" in states["broken-onnx"]["reason"]

    # The bank: the same numbers as the torch backend's bank.
    status, onnx_v1 = out["v1"]
    assert status == 200, onnx_v1
    assert onnx_v1["sampler"] == "bank" and onnx_v1["samples"] == 512 and onnx_v1["seed"] == 0
    assert out["v2"][0] == 200 and out["v2"][1]["parameters"]["sampler"] == "bank"
    torch_bank = _torch_answer(onnx_repository, {})
    decisions = [row["decision"] for row in onnx_v1["predictions"]]
    assert decisions == [row["decision"] for row in torch_bank["predictions"]]
    assert decisions == ["accept", "reject", "accept", "refer"]
    for onnx_row, torch_row in zip(onnx_v1["predictions"], torch_bank["predictions"], strict=True):
        # The gate is the same on both backends: the same reasons, scores and flags.
        assert onnx_row["label"] == torch_row["label"] and onnx_row["reasons"] == torch_row["reasons"]
        for name in ("support", "density"):
            assert onnx_row["gate"][name] == torch_row["gate"][name]
        if torch_row["probabilities"] is None:
            assert onnx_row["probabilities"] is None and onnx_row["gate"]["epistemic"]["score"] is None
            continue
        onnx_epistemic, torch_epistemic = onnx_row["gate"]["epistemic"], torch_row["gate"]["epistemic"]
        assert onnx_epistemic["score"] == pytest.approx(torch_epistemic["score"], abs=1e-5)
        assert onnx_epistemic["flag"] == torch_epistemic["flag"]
        for label, p in torch_row["probabilities"].items():
            assert onnx_row["probabilities"][label] == pytest.approx(p, abs=1e-5)
        for key in ("total", "aleatoric", "epistemic", "std"):
            assert onnx_row["uncertainty"][key] == pytest.approx(torch_row["uncertainty"][key], abs=1e-5)

    # Fresh samples from the sampling graph: replayable by seed; a seed other than the bank's means fresh.
    (status, fresh), (_, again) = out["fresh"], out["fresh_again"]
    assert status == 200, fresh
    assert fresh["sampler"] == "fresh" and fresh["seed"] == 1 and fresh["samples"] == 512
    assert fresh["predictions"] == again["predictions"]
    assert fresh["predictions"] != onnx_v1["predictions"]
    # A seeded request on a few rows runs the local graph, as the torch engine's auto sampler chooses.
    assert out["seeded_auto"][0] == 200 and out["seeded_auto"][1]["sampler"] == "local"
    status, unseeded = out["unseeded_fresh"]
    assert status == 200 and unseeded["sampler"] == "fresh" and isinstance(unseeded["seed"], int)
    status, v2_fresh = out["v2_fresh"]
    assert status == 200 and v2_fresh["parameters"]["sampler"] == "fresh" and v2_fresh["parameters"]["seed"] == 2

    # 4096 fresh samples (numpy noise) estimate the same predictive as torch's: within 5 Monte Carlo errors.
    status, many = out["many"]
    assert status == 200 and many["samples"] == 4096
    torch_many = _torch_answer(onnx_repository, {"samples": 4096, "seed": 3, "sampler": "fresh"})
    both_errors = many["mc_error"]["probability"] + torch_many["mc_error"]["probability"]
    for onnx_row, torch_row in zip(many["predictions"], torch_many["predictions"], strict=True):
        if torch_row["probabilities"] is None:
            continue
        for label, p in torch_row["probabilities"].items():
            assert abs(onnx_row["probabilities"][label] - p) <= 5 * both_errors
        assert onnx_row["uncertainty"]["epistemic"] == pytest.approx(torch_row["uncertainty"]["epistemic"], rel=0.2)

    # Adaptive: chunks of 64 until both errors are within the tolerance (or the cap), on either graph.
    for name, sampler in (("adaptive", "local"), ("fresh_adaptive", "fresh")):
        status, adaptive = out[name]
        assert status == 200 and adaptive["sampler"] == sampler and adaptive["samples"] % 64 == 0
        errors = adaptive["mc_error"]
        assert max(errors["probability"], errors["mutual_information"]) <= 0.01

    # Local reparameterisation: replayable by seed, and 4096 samples estimate torch's predictive.
    (status, local), (_, local_again) = out["local"], out["local_again"]
    assert status == 200 and local["sampler"] == "local" and local["seed"] == 1 and local["samples"] == 512
    assert local["predictions"] == local_again["predictions"] and local["predictions"] != fresh["predictions"]
    status, local_many = out["local_many"]
    assert status == 200 and local_many["sampler"] == "local"
    both_errors = local_many["mc_error"]["probability"] + torch_many["mc_error"]["probability"]
    for onnx_row, torch_row in zip(local_many["predictions"], torch_many["predictions"], strict=True):
        if torch_row["probabilities"] is None:
            continue
        for label, p in torch_row["probabilities"].items():
            assert abs(onnx_row["probabilities"][label] - p) <= 5 * both_errors
        assert onnx_row["uncertainty"]["epistemic"] == pytest.approx(torch_row["uncertainty"]["epistemic"], rel=0.2)

    # What this export cannot do is refused by name: the bank with another seed, local without its graph.
    assert out["bank_seed"][0] == 422 and out["bank_seed"][1]["detail"][0]["loc"] == ["body", "seed"]
    status, older = out["older_local"]
    assert status == 422 and older["detail"][0]["loc"] == ["body", "sampler"]
    assert "local-reparameterisation graph" in older["detail"][0]["msg"]
    assert states["older-export"]["state"] == "ready"


def _torch_answer(repository: Path, options: dict) -> dict:
    import asyncio

    async def ask() -> dict:
        app = create_app(Settings(models=repository, backend="torch", device="cpu"))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://torch") as client:
                for _ in range(200):
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                body = {"instances": ROWS, **options}
                response = await client.post("/v1/models/flchain-mortality/predict", json=body)
                assert response.status_code == 200
                return response.json()

    return asyncio.run(ask())
