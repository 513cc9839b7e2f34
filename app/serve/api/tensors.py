"""Tensor contents as bytes, for the binary tensor data extension (REST /v2) and gRPC's raw contents.

Little-endian, row-major, no padding; BOOL one byte per element; BYTES each element prefixed by its 4-byte
little-endian length. Neither encoding has a null, so a missing value is NaN (FP16/FP32/FP64: numbers decode
to an array, where NaN is missing as in a table's column) or, for a categorical feature's BYTES element, the
empty string (decoded to None, as JSON's null).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.data.schema import FeatureKind
from app.serve.errors import RequestRejected

DTYPES = {
    "BOOL": "|b1",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = sorted([*DTYPES, "BYTES"])
NUMERIC_DATATYPES = frozenset(DTYPES) - {"BOOL"}
LENGTH = struct.Struct("<I")
INTEGER_RANGES = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}


def check_datatype(field: str, datatype: str) -> None:
    """RequestRejected naming ``field`` unless ``datatype`` is one of the protocol's."""
    if datatype not in DATATYPES:
        raise RequestRejected(field, f"unknown datatype {datatype}; expected one of {DATATYPES}")


def check_feature_datatype(field: str, datatype: str, kind: FeatureKind) -> None:
    """RequestRejected naming ``field`` unless ``datatype`` suits a feature of ``kind`` (BYTES for categories)."""
    check_datatype(field, datatype)
    if kind is FeatureKind.CATEGORICAL:
        if datatype != "BYTES":
            raise RequestRejected(field, f"categorical feature needs datatype BYTES, got {datatype}")
        return
    if datatype not in NUMERIC_DATATYPES:
        raise RequestRejected(field, f"numeric feature needs one of {sorted(NUMERIC_DATATYPES)}, got {datatype}")


def check_integers(datatype: str, values: list[Any] | np.ndarray, where: Callable[[int], str]) -> None:
    """Each JSON element of an integer ``datatype`` an integer in its range (``where(i)``: element i's field); an
    array is in its dtype's range already, and None (a missing value) is the preprocessing's to judge."""
    if datatype not in INTEGER_RANGES or isinstance(values, np.ndarray):
        return
    low, high = INTEGER_RANGES[datatype]
    for row, value in enumerate(values):
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if value is not None and not isinstance(value, bool) and (not integral or not low <= value <= high):
            reason = f"{datatype} element must be an integer in [{low}, {high}], got {value!r}"
            raise RequestRejected(where(row), reason)


def missing_as_none(values: list[Any], datatype: str) -> list[Any]:
    """BYTES elements with the empty one (the encoding's missing marker) as None."""
    return [None if v == "" else v for v in values] if datatype == "BYTES" else values


def text(field: str, elements: list[bytes]) -> list[str]:
    try:
        return [e.decode("utf-8") for e in elements]
    except UnicodeDecodeError:
        raise RequestRejected(field, "BYTES element is not valid UTF-8") from None


def _uniform(raw: bytes) -> tuple[list[bytes], np.ndarray] | None:
    """Elements all of one length (a code, a sex), read at once: (distinct elements, each element's index
    into them); None when the lengths differ."""
    (size,) = LENGTH.unpack_from(raw, 0)
    if len(raw) % (4 + size):
        return None
    table = np.frombuffer(raw, dtype=np.dtype([("size", "<u4"), ("value", f"V{size}")]))
    if not (table["size"] == size).all():
        return None
    if size == 0:
        return [b""], np.zeros(table.size, dtype=np.intp)
    distinct, index = np.unique(table["value"], return_inverse=True)
    return [v.tobytes() for v in distinct], index


def _elements(field: str, raw: bytes) -> tuple[list[bytes], np.ndarray]:
    """BYTES data -> (distinct elements, each element's index into them)."""
    if len(raw) >= 4 and (uniform := _uniform(raw)) is not None:
        return uniform
    out, at, end = [], 0, len(raw)
    while at < end:
        if at + 4 > end:
            raise RequestRejected(field, "BYTES data ends inside a 4-byte length prefix")
        (size,) = LENGTH.unpack_from(raw, at)
        at += 4
        if at + size > end:
            raise RequestRejected(field, f"BYTES element of {size} bytes runs past the tensor's data")
        out.append(raw[at : at + size])
        at += size
    distinct = list(dict.fromkeys(out))
    position = {e: i for i, e in enumerate(distinct)}
    return distinct, np.array([position[e] for e in out], dtype=np.intp)


def from_bytes(field: str, datatype: str, raw: bytes) -> np.ndarray:
    """One tensor's bytes -> its flat elements: an array of the datatype (NaN is a missing number, as in a
    table's column), or for BYTES an object array of str (None where empty); RequestRejected naming ``field``."""
    if datatype == "BYTES":
        distinct, index = _elements(field, raw)  # a feature's values repeat: each distinct one is decoded once
        decoded = np.empty(len(distinct), dtype=object)
        decoded[:] = missing_as_none(text(field, distinct), datatype)
        return decoded[index]
    check_datatype(field, datatype)
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise RequestRejected(field, f"{len(raw)} bytes are not a whole number of {datatype} elements")
    return np.frombuffer(raw, dtype=dtype)


def to_bytes(datatype: str, values: np.ndarray) -> bytes:
    """Flat elements (a numeric or bool array; for BYTES, an array of str) -> the tensor's bytes."""
    if datatype == "BYTES":
        # Outputs repeat a few strings (decisions, labels, reasons): each distinct one is encoded once.
        encoded: dict[str, bytes] = {}
        for value in set(values.ravel().tolist()):
            utf8 = str(value).encode("utf-8")
            encoded[value] = LENGTH.pack(len(utf8)) + utf8
        return b"".join(map(encoded.__getitem__, values.ravel().tolist()))
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()


@dataclass(frozen=True)
class OutputTensor:
    """One output before it is written: ``values`` flat, FP64 with NaN where a row is not scored (JSON's
    null), bool (BOOL) or str (BYTES)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray

    def data(self) -> list[Any]:
        """The JSON data: FP64 NaN as null (JSON has no NaN)."""
        if self.datatype != "FP64" or np.isfinite(self.values).all():
            return self.values.tolist()
        return [v if math.isfinite(v) else None for v in self.values.tolist()]
