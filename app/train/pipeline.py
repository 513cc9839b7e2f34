"""From a split data set to a saved checkpoint: preprocess, train, fit and calibrate the OOD gate, save."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from app.bnn.network import BayesianMLP, LayerKind, parameter_count
from app.checkpoint.io import load_checkpoint, save_checkpoint
from app.checkpoint.manifest import (
    FORMAT_VERSION,
    Manifest,
    TargetScale,
    TaskInfo,
    TaskType,
    TrainingInfo,
    WeightsInfo,
)
from app.data.dataset import TabularDataset
from app.data.preprocess import Preprocessing
from app.data.schema import FeatureSpec
from app.data.sequence import SequenceDataset
from app.errors import DataError, WarmStartError
from app.train.calibrate import build_gate
from app.train.config import TrainConfig
from app.train.loop import EpochLog, TrainResult, train


def sbnn_version() -> str:
    try:
        return metadata.version("sbnn")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def training_split_targets(
    dataset: TabularDataset | SequenceDataset,
) -> tuple[np.ndarray, np.ndarray, TargetScale | None]:
    """The training and validation targets as the network learns them, and a regression's scale: class ids
    as they are, or targets standardised by the training split's mean and std (the Gaussian head starts on a
    unit scale; every answer is mapped back)."""
    y_train, y_val = dataset.train.y, dataset.val.y
    if dataset.labels is not None:
        return y_train, y_val, None
    scale = target_scale(y_train, dataset.target)
    return (y_train - scale.mean) / scale.std, (y_val - scale.mean) / scale.std, scale


def target_scale(y: np.ndarray, target: str) -> TargetScale:
    """A regression target's training mean and std, the standardisation the network is trained on."""
    y = np.asarray(y, dtype=np.float64)
    std = float(y.std()) if y.size else 0.0
    if not np.isfinite(y).all() or std == 0.0:
        raise DataError(f"{target}: training targets must be finite and not all equal")
    return TargetScale(mean=float(y.mean()), std=std)


def task_info(target: str, labels: list[str] | None, scale: TargetScale | None, unit: str | None = None) -> TaskInfo:
    """The manifest's task: a regression (``scale`` given, no labels) or a binary / multiclass classifier."""
    if scale is not None:
        return TaskInfo(type=TaskType.REGRESSION, target=target, unit=unit, scale=scale)
    labels = list(labels or [])
    kind = TaskType.BINARY if len(labels) == 2 else TaskType.MULTICLASS
    return TaskInfo(type=kind, target=target, labels=labels)


def training_info(config: TrainConfig, result: TrainResult) -> TrainingInfo:
    """The manifest's record of how the network was trained."""
    return TrainingInfo(
        config=config.model_dump(mode="json"),
        seed=config.seed,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_nll=result.best_val_nll,
        duration_seconds=round(result.duration_seconds, 3),
        device=result.device,
        torch_version=torch.__version__,
        sbnn_version=sbnn_version(),
    )


def load_twin(
    folder: str | Path,
    preprocessing: Preprocessing,
    features: list[FeatureSpec],
    hidden: list[int],
    device: str | torch.device = "cpu",
) -> BayesianMLP:
    """The deterministic network of checkpoint ``folder``, for an SVD warm start of a network with ``hidden``
    widths on data preprocessed by ``preprocessing``; :class:`WarmStartError` when it is another kind, has
    other widths, or saw other features or preprocessing (its weights would then map other inputs)."""
    checkpoint = load_checkpoint(folder, device=device)
    manifest = checkpoint.manifest
    if manifest.kind is not LayerKind.DETERMINISTIC:
        raise WarmStartError(str(folder), f"the twin must be a 'deterministic' checkpoint, not '{manifest.kind.value}'")
    twin_names = [f.name for f in manifest.features]
    names = [f.name for f in features]
    if twin_names != names:
        raise WarmStartError(str(folder), f"the twin's features {twin_names} differ from the data set's {names}")
    if list(manifest.network.hidden) != list(hidden):
        raise WarmStartError(str(folder), f"the twin's hidden widths {manifest.network.hidden} differ from {hidden}")
    if manifest.preprocessing != preprocessing:
        raise WarmStartError(
            str(folder),
            "the twin's preprocessing differs from the one fitted on this training split (other data or split)",
        )
    return checkpoint.model


def train_checkpoint(
    dataset: TabularDataset,
    config: TrainConfig,
    out: str | Path,
    name: str | None = None,
    version: str = "1",
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[Manifest, TrainResult]:
    """Train ``config.kind`` on ``dataset`` and write a checkpoint folder ``out``; ``on_epoch`` hears of every
    epoch and ``on_step`` of each long step after them (a description), for progress shown by the caller."""
    out = Path(out)
    preprocessing = Preprocessing.fit(dataset.train.frame, dataset.features)
    x_train = preprocessing.transform(dataset.train.frame)
    x_val = preprocessing.transform(dataset.val.frame)
    y_train, y_val, scale = training_split_targets(dataset)
    classes = None if dataset.labels is None else len(dataset.labels)
    twin = None
    if config.warm_start is not None:
        twin = load_twin(config.warm_start, preprocessing, dataset.features, config.hidden)
    result = train(x_train, y_train, x_val, y_val, classes, config, on_epoch, twin=twin)

    gate, gate_tensors = build_gate(
        result.model, dataset, preprocessing, config.target_fpr, config.default_samples, on_step=on_step, scale=scale
    )

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name or out.name,
        version=version,
        created=datetime.now(UTC).replace(microsecond=0),
        kind=config.kind,
        network=result.model.spec,
        ranks=result.model.spec.layer_ranks(),
        parameter_count=parameter_count(result.model),
        task=task_info(dataset.target, dataset.labels, scale, dataset.target_unit),
        features=list(dataset.features),
        preprocessing=preprocessing,
        gate=gate,
        default_samples=result.model.num_samples(config.default_samples),
        training=training_info(config, result),
        data=dataset.provenance,
        weights=WeightsInfo(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
    )
    if on_step is not None:
        on_step(f"saving {out}")
    return save_checkpoint(out, result.model, manifest, gate_tensors), result
