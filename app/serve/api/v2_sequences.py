"""/v2 inputs of a sequence model: one tensor per per-step feature shaped [N, T] and ``lengths`` [N].

T is the longest sequence of the request; sequence i's steps are row i's first ``lengths[i]`` elements,
oldest first, and the rest of the row is padding (any value of the tensor's datatype: 0, "", NaN), which is
dropped here before anything looks at it. ``lengths`` is INT32 or INT64 (or any integer datatype), each in
[1, T]. The data may be flat row-major (N·T values, as binary data and gRPC carry it) or nested JSON
([[…T values], …N rows]). What remains is the long table of every sequence's steps, which the checkpoint's
preprocessing checks (app.serve.sequences).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.data.schema import FeatureSpec
from app.serve.api.schemas_v2 import InferenceRequest, RequestInput
from app.serve.api.tensors import NUMERIC_DATATYPES, check_feature_datatype, check_integers
from app.serve.backend import LENGTHS_INPUT
from app.serve.dataplane import Columns
from app.serve.errors import RequestRejected

INTEGER_DATATYPES = frozenset(d for d in NUMERIC_DATATYPES if d.startswith(("INT", "UINT")))


def _flat(tensor: RequestInput, field: str, size: int) -> list[Any] | np.ndarray:
    """The tensor's data as ``size`` flat row-major values (nested JSON lists flattened one level per axis)."""
    data = tensor.data
    assert data is not None  # v2_binary.read_request and gRPC place every input's data
    if not isinstance(data, np.ndarray) and any(isinstance(v, list) for v in data):
        rows, columns = tensor.shape if len(tensor.shape) == 2 else (tensor.shape[0], 1)
        if len(data) != rows or not all(
            isinstance(row, list) and len(row) == columns and not any(isinstance(v, list) for v in row) for row in data
        ):
            raise RequestRejected(field, f"nested data does not match shape {tensor.shape}")
        data = [v for row in data for v in row]
    if len(data) != size:
        raise RequestRejected(field, f"shape {tensor.shape} holds {size} values, data has {len(data)}")
    return data


def _lengths(tensor: RequestInput, steps: int) -> np.ndarray:
    """``lengths`` [N] (or [N, 1]) of an integer datatype, each in [1, T] -> (N,) int64."""
    field = f"inputs.{LENGTHS_INPUT}"
    if tensor.datatype not in INTEGER_DATATYPES:
        raise RequestRejected(field, f"needs an integer datatype (INT32 or INT64), got {tensor.datatype}")
    shape = tensor.shape
    if any(d < 0 for d in shape) or (len(shape) == 2 and shape[1] != 1):
        raise RequestRejected(field, f"shape must be [N], got {shape}")
    values = _flat(tensor, field, shape[0])
    check_integers(tensor.datatype, values, lambda row: f"{field}[{row}]")
    if not isinstance(values, np.ndarray) and any(v is None or isinstance(v, bool) for v in values):
        raise RequestRejected(field, "every sequence needs its length (an integer)")
    lengths = np.asarray(values).astype(np.int64)
    for row, length in enumerate(lengths.tolist()):
        if not 1 <= length <= steps:
            raise RequestRejected(f"{field}[{row}]", f"must be between 1 and T = {steps} (the inputs' second axis)")
    return lengths


def sequence_columns(request: InferenceRequest, features: Sequence[FeatureSpec]) -> tuple[Columns, np.ndarray]:
    """The inputs of a sequence model -> (every sequence's steps per feature, oldest first; lengths (N,)),
    refusing unknown, duplicated and missing inputs, unequal or wrong shapes, and lengths outside [1, T]."""
    kinds = {f.name: f.kind for f in features}
    expected = [*kinds, LENGTHS_INPUT]
    tensors: dict[str, RequestInput] = {}
    for tensor in request.inputs:
        if tensor.name not in expected:
            raise RequestRejected(f"inputs.{tensor.name}", f"unknown input; expected {expected}")
        if tensor.name in tensors:
            raise RequestRejected(f"inputs.{tensor.name}", "input given more than once")
        tensors[tensor.name] = tensor
    for name in expected:
        if name not in tensors:
            raise RequestRejected(f"inputs.{name}", "missing input")
    shapes = {tuple(tensors[name].shape) for name in kinds}
    if len(shapes) != 1:
        raise RequestRejected("inputs", f"every per-step input needs the same shape [N, T]; got {sorted(shapes)}")
    shape = next(iter(shapes))
    if len(shape) != 2 or shape[0] < 0 or shape[1] < 1:
        raise RequestRejected(f"inputs.{next(iter(kinds))}", f"shape must be [N, T] with T >= 1, got {list(shape)}")
    rows, steps = shape
    lengths = _lengths(tensors[LENGTHS_INPUT], steps)
    if lengths.size != rows:
        raise RequestRejected(f"inputs.{LENGTHS_INPUT}", f"{lengths.size} lengths for N = {rows} sequences")
    # Each sequence's steps, in the long table: row i's first lengths[i] elements (the rest is padding).
    positions = np.concatenate([i * steps + np.arange(n) for i, n in enumerate(lengths.tolist())] or [[]])
    positions = positions.astype(np.intp)
    columns: Columns = {}
    for name, kind in kinds.items():
        tensor, field = tensors[name], f"inputs.{name}"
        check_feature_datatype(field, tensor.datatype, kind)
        values = _flat(tensor, field, rows * steps)
        kept = values[positions] if isinstance(values, np.ndarray) else [values[p] for p in positions.tolist()]
        check_integers(tensor.datatype, kept, lambda at, f=field: _step_field(f, lengths, at))
        columns[name] = kept
    return columns, lengths


def _step_field(field: str, lengths: np.ndarray, at: int) -> str:
    """The field of the long table's element ``at``: ``inputs.TEMP[2][5]`` (sequence 2, step 5)."""
    starts = np.cumsum(lengths) - lengths
    row = int(np.searchsorted(starts, at, side="right")) - 1
    return f"{field}[{row}][{at - int(starts[row])}]"


def locate_step(feature: str, row: int, step: int) -> str:
    return f"inputs.{feature}[{row}][{step}]"
