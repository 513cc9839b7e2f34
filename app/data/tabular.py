"""Users' own tables (CSV or Parquet), classification or regression, split like the bundled data set.

Training-only: needs pandas (and pyarrow for Parquet).

The task is ``task`` when given, else inferred from the target (:func:`app.data.table_checks.infer_task`): a
numeric target with more than ``MAX_CLASSES`` distinct values or any value that is not a whole number is a
regression; any other target (text, bool, or at most ``MAX_CLASSES`` whole numbers) is a classification.
Before a split, :func:`check_target` refuses a target the task cannot use (an infinity; a continuous target
forced to classification: too many classes; a text target forced to regression) and :func:`check_columns`
refuses features that look like identifiers or have more than ``MAX_LEVELS`` categories (see docs/data.md).
Missing values in a categorical feature are left to the preprocessing, which keeps them as a level of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.data.dataset import (
    DataProvenance,
    Split,
    TabularDataset,
    check_fractions,
    file_sha256,
    make_split,
    row_counts,
    split_population,
)
from app.data.preprocess import infer_feature_specs
from app.data.schema import PlausibleRange
from app.data.table_checks import (
    MAX_CLASSES,
    MAX_LEVELS,
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
    infer_task,
    label,
    listed,
    read_table,
)
from app.errors import DataError

__all__ = [
    "MAX_CLASSES",
    "MAX_LEVELS",
    "OOD_NAME",
    "check_columns",
    "check_target",
    "infer_task",
    "listed",
    "load_table",
]

OOD_NAME = "ood-file"


def load_table(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    ood_path: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    plausible: Mapping[str, PlausibleRange] | None = None,
    units: Mapping[str, str] | None = None,
    drop: list[str] | None = None,
    check: bool = True,
    task: str | None = None,
) -> TabularDataset:
    """Load a table, drop rows without a target, split, and add an optional OOD file.

    ``task``: "classification", "regression", or None to infer it: a numeric target with more than
    ``MAX_CLASSES`` distinct values or any value that is not a whole number is a regression, anything else a
    classification. Classification: labels are the sorted unique target values as strings, ``y`` int64 class
    ids, the split stratified by class. Regression: ``labels`` is None, ``y`` float64 targets (NaN in an OOD
    file without the target), the split a plain ``default_rng(seed)`` random split by the fractions.
    Features default to every column but the target, less ``drop``. With ``check`` (for a new model; a
    checkpoint's data is rebuilt without), unusable features are refused first (:func:`check_columns`); the
    target is always checked (:func:`check_target`: infinities, a task it cannot serve).
    ``plausible`` bounds numeric features' physically possible values (the gate rejects rows outside them) and
    ``units`` names their units (the stress suite converts them); both are kept in the provenance, with the task.
    """
    path = Path(path)
    fractions = check_fractions(fractions)
    table = read_table(path)
    sha = file_sha256(path)
    if target not in table.columns:
        raise DataError(f"{target}: target column not in {path.name}")
    has_target = table[target].notna()
    dropped = int((~has_target).sum())
    table = table[has_target].reset_index(drop=True)
    task = check_target(table[target], target, task)
    regression = task == REGRESSION
    labels: list[str] | None
    if regression:
        labels = None
        y = float_targets(table[target], target, str(path))
    else:
        labels = sorted({label(v) for v in table[target].tolist()})
        if len(labels) < 2:
            raise DataError(f"{target}: need at least 2 classes, found {labels}")
        y = encode(table[target], labels, str(path))

    features = choose_features(list(table.columns), features, drop, {target: "the target"}, path.name)
    if check:
        check_columns(table, features, categorical)

    train, val, test = split_population(table[features], y, fractions, seed, regression=regression)
    # A regression's target may carry a unit too (its answers and card name it); the rest are features'.
    target_unit = (units or {}).get(target) if regression else None
    feature_units = {k: v for k, v in (units or {}).items() if not (regression and k == target)}
    specs = annotate(infer_feature_specs(train.frame, features, categorical), plausible or {}, feature_units)
    specs = allow_gaps(specs, table)
    if check:
        check_levels(specs, val.frame, test.frame)

    options: dict[str, object] = {
        "path": str(path.resolve()),
        "task": task,
        "features": list(features),
        "categorical": list(categorical) if categorical else None,
        "ood_path": None,
        "ood_sha256": None,
        "dropped_missing_target": dropped,
        "plausible": {k: v.model_dump() for k, v in (plausible or {}).items()} or None,
        "units": dict(units) if units else None,
    }
    ood: dict[str, Split] = {}
    ood_reasons: dict[str, str] = {}
    if ood_path is not None:
        ood_path = Path(ood_path)
        ood_table = read_table(ood_path)
        absent = [f for f in features if f not in ood_table.columns]
        if absent:
            raise DataError(f"{absent[0]}: feature missing from the OOD file {ood_path.name}")
        if target not in ood_table.columns:
            ood_y = np.full(len(ood_table), np.nan if regression else -1)
        elif regression:
            ood_y = float_targets(ood_table[target], target, str(ood_path))
        else:
            ood_y = encode(ood_table[target], labels or [], str(ood_path))
        ood[OOD_NAME] = make_split(ood_table[features], ood_y, regression=regression)
        ood_reasons[OOD_NAME] = (
            f"User-supplied table {ood_path.name}: the shift is whatever sets it apart from {path.name}."
        )
        options.update(ood_path=str(ood_path.resolve()), ood_sha256=file_sha256(ood_path))

    how = "at random (regression)" if regression else "stratified by class"
    provenance = DataProvenance(
        source=f"{file_kind(path)}:{path.resolve()}",
        sha256=sha,
        target=target,
        population=(
            f"Rows of {path.name} with a known '{target}' ({len(y)} of {len(y) + dropped}), "
            f"split {fractions[0]:g}/{fractions[1]:g}/{fractions[2]:g} {how}."
        ),
        rows=row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,
        ood_sets=ood_reasons,
        options=options,
    )
    return TabularDataset(
        name=path.name.split(".")[0],
        target=target,
        labels=labels,
        features=specs,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
        target_unit=target_unit,
    )
