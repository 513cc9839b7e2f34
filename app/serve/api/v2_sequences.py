"""/v2 inputs of a sequence model: the per-step features as [N, T] tensors or one [N, T, F] tensor, and
``lengths`` [N].

Either one tensor per per-step feature shaped [N, T], or the numeric features packed into one ``steps`` tensor
[N, T, F] (F: the numeric features in the manifest's order, as /v2's metadata lists them) beside one [N, T]
BYTES tensor per categorical feature. T is the longest sequence of the request; sequence i's steps are row i's
first ``lengths[i]`` elements, oldest first, and the rest of the row is padding (any value of the tensor's
datatype: 0, "", NaN), which is dropped here before anything looks at it. ``lengths`` is INT32 or INT64 (or
any integer datatype), each in [1, T]. The data may be flat row-major (as binary data and gRPC carry it) or
nested JSON ([[…T values], …N rows]). What remains is the long table of every sequence's steps, which the
checkpoint's preprocessing checks (app.serve.sequences).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.data.schema import FeatureKind, FeatureSpec
from app.serve.api.schemas_v2 import InferenceRequest, RequestInput
from app.serve.api.tensors import NUMERIC_DATATYPES, check_feature_datatype, check_integers
from app.serve.backend import LENGTHS_INPUT, STEPS_INPUT
from app.serve.dataplane import Columns
from app.serve.errors import RequestRejected

INTEGER_DATATYPES = frozenset(d for d in NUMERIC_DATATYPES if d.startswith(("INT", "UINT")))


def _unnest(data: list[Any], shape: Sequence[int], field: str) -> list[Any]:
    """Nested JSON of ``shape`` -> its values, row-major."""
    if len(data) != shape[0] or any(isinstance(v, list) != (len(shape) > 1) for v in data):
        raise RequestRejected(field, f"nested data does not match shape {list(shape)}")
    return data if len(shape) == 1 else [v for row in data for v in _unnest(row, shape[1:], field)]


def _flat(tensor: RequestInput, field: str, size: int) -> list[Any] | np.ndarray:
    """The tensor's data as ``size`` flat row-major values (nested JSON lists flattened one level per axis)."""
    data = tensor.data
    assert data is not None  # v2_binary.read_request and gRPC place every input's data
    if not isinstance(data, np.ndarray) and any(isinstance(v, list) for v in data):
        data = _unnest(data, tensor.shape, field)
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


def _packed(tensor: RequestInput, numeric: Sequence[str]) -> tuple[dict[str, list[Any] | np.ndarray], list[int]]:
    """``steps`` [N, T, F] -> each numeric feature's N·T values and the shape [N, T]."""
    field = f"inputs.{STEPS_INPUT}"
    if not numeric:
        raise RequestRejected(field, "the model has no numeric per-step features to pack; send one [N, T] per feature")
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise RequestRejected(field, f"needs one of {sorted(NUMERIC_DATATYPES)}, got {tensor.datatype}")
    shape = tensor.shape
    if len(shape) != 3 or shape[0] < 0 or shape[1] < 1 or shape[2] != len(numeric):
        wanted = f"[N, T, {len(numeric)}] with T >= 1 (the numeric features {list(numeric)})"
        raise RequestRejected(field, f"shape must be {wanted}, got {shape}")
    values = _flat(tensor, field, shape[0] * shape[1] * shape[2])
    return {name: values[j :: len(numeric)] for j, name in enumerate(numeric)}, shape[:2]


class StepLocator:
    """Names a step's value as the request sent it: ``inputs.TEMP[2][5]`` (sequence 2, step 5) for an [N, T]
    tensor, ``inputs.steps[2][5][1]`` for a feature packed into ``steps`` (its position there)."""

    def __init__(self) -> None:
        self.packed: dict[str, int] = {}

    def __call__(self, feature: str, row: int, step: int) -> str:
        if feature in self.packed:
            return f"inputs.{STEPS_INPUT}[{row}][{step}][{self.packed[feature]}]"
        return f"inputs.{feature}[{row}][{step}]"


def sequence_columns(
    request: InferenceRequest, features: Sequence[FeatureSpec], locator: StepLocator | None = None
) -> tuple[Columns, np.ndarray]:
    """The inputs of a sequence model -> (every sequence's steps per feature, oldest first; lengths (N,)),
    refusing unknown, duplicated and missing inputs, unequal or wrong shapes, and lengths outside [1, T];
    ``locator`` learns which features came packed in ``steps``."""
    kinds = {f.name: f.kind for f in features}
    tensors: dict[str, RequestInput] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise RequestRejected(f"inputs.{tensor.name}", "input given more than once")
        tensors[tensor.name] = tensor
    packing = STEPS_INPUT in tensors and STEPS_INPUT not in kinds  # a feature called "steps" keeps its name
    numeric = [name for name, kind in kinds.items() if kind is not FeatureKind.CATEGORICAL]
    separate = [name for name in kinds if not packing or name not in numeric]
    expected = [*separate, STEPS_INPUT, LENGTHS_INPUT] if packing else [*kinds, LENGTHS_INPUT]
    for name in tensors:
        if name not in expected:
            raise RequestRejected(f"inputs.{name}", f"unknown input; expected {expected}")
    for name in expected:
        if name not in tensors:
            raise RequestRejected(f"inputs.{name}", "missing input")
    flat: dict[str, list[Any] | np.ndarray] = {}
    shapes: set[tuple[int, ...]] = set()
    if packing:
        flat, packed_shape = _packed(tensors[STEPS_INPUT], numeric)
        shapes.add(tuple(packed_shape))
        if locator is not None:
            locator.packed = {name: j for j, name in enumerate(numeric)}
    shapes |= {tuple(tensors[name].shape) for name in separate}
    if len(shapes) != 1:
        raise RequestRejected("inputs", f"every per-step input needs the same [N, T]; got {sorted(shapes)}")
    shape = next(iter(shapes))
    if len(shape) != 2 or shape[0] < 0 or shape[1] < 1:
        raise RequestRejected(
            f"inputs.{next(iter(separate), STEPS_INPUT)}", f"shape must be [N, T] with T >= 1, got {list(shape)}"
        )
    rows, steps = shape
    lengths = _lengths(tensors[LENGTHS_INPUT], steps)
    if lengths.size != rows:
        raise RequestRejected(f"inputs.{LENGTHS_INPUT}", f"{lengths.size} lengths for N = {rows} sequences")
    # Each sequence's steps, in the long table: row i's first lengths[i] elements (the rest is padding).
    positions = np.concatenate([i * steps + np.arange(n) for i, n in enumerate(lengths.tolist())] or [[]])
    positions = positions.astype(np.intp)
    where = locator or StepLocator()
    columns: Columns = {}
    for name, kind in kinds.items():
        if name in flat:
            values, datatype = flat[name], tensors[STEPS_INPUT].datatype
        else:
            tensor = tensors[name]
            check_feature_datatype(f"inputs.{name}", tensor.datatype, kind)
            values, datatype = _flat(tensor, f"inputs.{name}", rows * steps), tensor.datatype
        kept = values[positions] if isinstance(values, np.ndarray) else [values[p] for p in positions.tolist()]
        check_integers(datatype, kept, lambda at, f=name: where(f, *_step_of(lengths, at)))
        columns[name] = kept
    return columns, lengths


def _step_of(lengths: np.ndarray, at: int) -> tuple[int, int]:
    """The (sequence, step) of the long table's element ``at``."""
    starts = np.cumsum(lengths) - lengths
    row = int(np.searchsorted(starts, at, side="right")) - 1
    return row, at - int(starts[row])
