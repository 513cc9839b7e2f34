"""From a split data set to a saved checkpoint: preprocess, train, calibrate the OOD gate, save."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from app.bnn.network import parameter_count
from app.bnn.predictive import decompose, predict
from app.checkpoint.io import save_checkpoint
from app.checkpoint.manifest import (
    FORMAT_VERSION,
    Manifest,
    TaskInfo,
    TaskType,
    TrainingInfo,
    WeightsInfo,
)
from app.data.dataset import TabularDataset
from app.data.preprocess import Preprocessing
from app.train.calibrate import calibrate_gate
from app.train.config import TrainConfig
from app.train.loop import EpochLog, TrainResult, train


def sbnn_version() -> str:
    try:
        return metadata.version("sbnn")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def ood_scores(result_model: torch.nn.Module, x: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Mutual information (nats) per row of x: (N, d) with a seeded generator: -> (N,)."""
    device = next(result_model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    return decompose(predict(result_model, xt, samples, generator)).epistemic.cpu().numpy()


def train_checkpoint(
    dataset: TabularDataset,
    config: TrainConfig,
    out: str | Path,
    name: str | None = None,
    version: str = "1",
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[Manifest, TrainResult]:
    """Train ``config.kind`` on ``dataset`` and write a checkpoint folder ``out``."""
    out = Path(out)
    preprocessing = Preprocessing.fit(dataset.train.frame, dataset.features)
    x_train = preprocessing.transform(dataset.train.frame)
    x_val = preprocessing.transform(dataset.val.frame)
    classes = len(dataset.labels)
    result = train(x_train, dataset.train.y, x_val, dataset.val.y, classes, config, on_epoch)

    calibration_seed = config.seed + 3
    scores = ood_scores(result.model, x_val, config.default_samples, calibration_seed)
    gate = calibrate_gate(scores, config.target_fpr, result.model.num_samples(config.default_samples), calibration_seed)

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name or out.name,
        version=version,
        created=datetime.now(UTC).replace(microsecond=0),
        kind=config.kind,
        network=result.model.spec,
        ranks=result.model.spec.layer_ranks(),
        parameter_count=parameter_count(result.model),
        task=TaskInfo(
            type=TaskType.BINARY if classes == 2 else TaskType.MULTICLASS,
            target=dataset.target,
            labels=list(dataset.labels),
        ),
        features=list(dataset.features),
        preprocessing=preprocessing,
        ood=gate,
        default_samples=result.model.num_samples(config.default_samples),
        training=TrainingInfo(
            config=config.model_dump(mode="json"),
            seed=config.seed,
            epochs_run=result.epochs_run,
            best_epoch=result.best_epoch,
            best_val_nll=result.best_val_nll,
            duration_seconds=round(result.duration_seconds, 3),
            device=result.device,
            torch_version=torch.__version__,
            sbnn_version=sbnn_version(),
        ),
        data=dataset.provenance,
        weights=WeightsInfo(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
    )
    return save_checkpoint(out, result.model, manifest), result
