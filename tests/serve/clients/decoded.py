"""What both client scripts print of an output: its datatype, shape, numpy dtype and values as JSON values.

Imported from the scripts' own folder (a script's folder is first on sys.path), so it needs only numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """numpy scalars -> JSON values: NaN as null, bytes as UTF-8 text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def decoded(datatype: str, array: np.ndarray) -> dict[str, Any]:
    """One output as the client's own ``as_numpy`` gave it."""
    return {
        "datatype": datatype,
        "shape": list(array.shape),
        "numpy_dtype": str(array.dtype),
        "data": [plain(value) for value in array.reshape(-1).tolist()],
    }
