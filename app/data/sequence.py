"""Sequence data sets: each example is a run of time steps (a patient's visits, a window of hours) and one target.

Steps are stored in long format, one row per step, so the tabular preprocessing (imputation, missing
indicators, one-hot levels, the gate's per-feature support) applies to every step unchanged; a split's
``lengths`` cut that table into its sequences. ``pad_steps`` turns the preprocessed steps into the network's
``(N, T, d)`` input: right-padded with zeros, the last ``max_length`` steps kept (the most recent history), and
the valid lengths beside it for the LSTM's mask.

pandas is imported only for type checking: the server pads requests without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.data.dataset import DataProvenance
from app.data.schema import FeatureSpec
from app.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class SequenceSplit:
    """``frame``: one row per time step (raw feature columns named as the FeatureSpecs), each sequence's steps
    contiguous and in time order; ``lengths``: (N,) int64 steps per sequence (each ≥ 1, summing to the rows of
    ``frame``); ``y``: (N,) float64 targets (regression) or int64 class ids (-1 where unknown); ``ids``: (N,)
    strings naming each sequence (a patient, a window's last hour) for tracing and figures."""

    frame: pd.DataFrame
    lengths: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths)
        if lengths.ndim != 1 or (lengths < 1).any():
            raise DataError("sequence lengths must be a 1-D array of counts >= 1")
        if int(lengths.sum()) != len(self.frame):
            raise DataError(f"sequence lengths sum to {int(lengths.sum())} but the split has {len(self.frame)} steps")
        if len(self.y) != lengths.size or len(self.ids) != lengths.size:
            raise DataError(f"{lengths.size} sequences but {len(self.y)} targets and {len(self.ids)} ids")

    def __len__(self) -> int:
        return int(np.asarray(self.lengths).size)

    @property
    def starts(self) -> np.ndarray:
        """(N,) int64 row of ``frame`` where each sequence begins."""
        lengths = np.asarray(self.lengths, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def select(self, index: np.ndarray) -> SequenceSplit:
        """The sequences at ``index`` (in that order), with a fresh 0..rows-1 step index."""
        index = np.asarray(index, dtype=np.int64)
        lengths = np.asarray(self.lengths, dtype=np.int64)
        starts = self.starts
        rows = (
            np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in index])
            if index.size
            else np.zeros(0, np.int64)
        )
        return SequenceSplit(
            frame=self.frame.iloc[rows].reset_index(drop=True),
            lengths=lengths[index].copy(),
            y=np.asarray(self.y)[index].copy(),
            ids=np.asarray(self.ids)[index].copy(),
        )

    def last_steps(self, keep: int) -> SequenceSplit:
        """Each sequence cut to its last ``keep`` steps (a shortened history)."""
        if keep < 1:
            raise DataError("keep at least one step")
        lengths = np.asarray(self.lengths, dtype=np.int64)
        kept = np.minimum(lengths, keep)
        ends = self.starts + lengths
        rows = np.concatenate([np.arange(e - k, e) for e, k in zip(ends, kept, strict=True)])
        return SequenceSplit(
            frame=self.frame.iloc[rows].reset_index(drop=True), lengths=kept, y=np.asarray(self.y).copy(), ids=self.ids
        )


@dataclass(frozen=True)
class SequenceDataset:
    """Sequences split into train/val/test (in-distribution) plus named OOD sets.

    ``labels`` None: a regression on a continuous target (``target_unit`` names its scale, e.g. ``log(1 + µg/m³)``);
    else the class labels (index = class id). ``max_length``: the steps the network sees (longer sequences keep
    their last ``max_length``). ``time``: the step-time column the steps were ordered by, if any (documentation
    and the manifest's sequence schema; it is a feature only when listed in ``features``).
    """

    name: str
    target: str
    labels: list[str] | None
    features: list[FeatureSpec]  # per step, from the train split only
    max_length: int
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit
    ood: dict[str, SequenceSplit]
    provenance: DataProvenance
    target_unit: str | None = None
    time: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None


def sequence_row_counts(
    train: SequenceSplit, val: SequenceSplit, test: SequenceSplit, ood: dict[str, SequenceSplit]
) -> dict[str, int]:
    """The ``DataProvenance.rows`` mapping, in sequences."""
    rows = {"train": len(train), "val": len(val), "test": len(test)}
    rows.update({f"ood:{name}": len(s) for name, s in ood.items()})
    return rows


def pad_steps(steps: np.ndarray, lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """steps: (ΣT, d) preprocessed rows, lengths (N,) -> x (N, max_length, d) float32 right-padded with zeros,
    and the (N,) int64 valid lengths, each sequence cut to its last ``max_length`` steps."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 1).any() or int(lengths.sum()) != steps.shape[0]:
        raise DataError("lengths must be counts >= 1 summing to the number of steps")
    if max_length < 1:
        raise DataError("max_length must be at least 1")
    kept = np.minimum(lengths, max_length)
    ends = np.cumsum(lengths)
    x = np.zeros((lengths.size, max_length, steps.shape[1]), dtype=np.float32)
    # Step j of sequence i (j < kept_i) is row ends_i − kept_i + j of the long table.
    position = np.arange(max_length)[None, :]
    valid = position < kept[:, None]
    source = (ends - kept)[:, None] + position
    x[valid] = steps[source[valid]]
    return x, kept
