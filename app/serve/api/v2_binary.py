"""The /v2 inference body on the wire: JSON, or JSON followed by binary tensor data (the binary tensor data
extension, as Triton and KServe define it).

A request is JSON whatever its Content-Type (or none). With an ``Inference-Header-Content-Length: L`` header
its first L bytes are the JSON and the rest is binary data: each input whose parameters carry
``binary_data_size`` takes that many bytes, in the order the inputs appear, instead of ``data``
(``app.serve.api.tensors`` has the layout). An output is written as binary when its parameters say
``binary_data: true``, or when the request's parameters say ``binary_data_output: true`` and the output does
not say otherwise; the response then carries the header, ``binary_data_size`` on each such output, and
Content-Type application/octet-stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from app.serve.api import strict_json
from app.serve.api.schemas_v2 import InferenceRequest, InferenceResponse
from app.serve.api.tensors import from_bytes
from app.serve.errors import RequestRejected

HEADER = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"


def _parse(text: bytes) -> InferenceRequest:
    """The JSON part -> the wire request; errors worded as FastAPI words a body's (``body.inputs.0.shape``).

    Strict (app.serve.api.strict_json): invalid UTF-8, a duplicated key or a lone surrogate in a key or string
    (an input's name, a BYTES element, the ``id``) is refused by its location before anything is scored."""
    try:
        document = strict_json.loads(text)
    except strict_json.JsonRefused as exc:
        raise RequestValidationError([exc.error()]) from None
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _json_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    digits = value.strip()
    # Length first: int() of thousands of digits is refused by Python (and slow); none is echoed in full.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(size)) or int(digits) > size:
        shown = value if len(value) <= 32 else f"{value[:32]}… ({len(value)} characters)"
        raise RequestRejected(HEADER, f"must be an integer from 0 to the body's {size} bytes, got {shown!r}")
    return int(digits)


def _flag(parameters: dict[str, Any] | None, key: str, field: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestRejected(f"{field}{key}", f"must be true or false, got {value!r}")
    return value


def read_request(body: bytes, json_length: str | None) -> InferenceRequest:
    """The request body (and its ``Inference-Header-Content-Length``, if any) -> the wire request with every
    input's data in place; RequestRejected naming the header, tensor or parameter otherwise."""
    length = _json_length(json_length, len(body))
    request = _parse(body if length is None else body[:length])
    binary = b"" if length is None else memoryview(body)[length:]
    at = 0
    for tensor in request.inputs:
        field = f"inputs.{tensor.name}"
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise RequestRejected(f"{field}.data", "missing: give data, or parameters.binary_data_size")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RequestRejected(f"{field}.parameters.binary_data_size", f"must be an integer >= 0, got {size!r}")
        if tensor.data is not None:
            raise RequestRejected(f"{field}.data", "not allowed together with parameters.binary_data_size")
        if length is None:
            raise RequestRejected(HEADER, "header required: an input has parameters.binary_data_size")
        if at + size > len(binary):
            raise RequestRejected(
                f"{field}.parameters.binary_data_size",
                f"{size} bytes from offset {at}, but the binary data holds {len(binary)} bytes",
            )
        tensor.data = from_bytes(field, tensor.datatype, bytes(binary[at : at + size]))
        at += size
    if at != len(binary):
        raise RequestRejected("body", f"{len(binary) - at} bytes of binary data beyond the inputs' binary_data_size")
    _flag(request.parameters, "binary_data_output", "parameters.")
    for output in request.outputs or []:
        _flag(output.parameters, "binary_data", f"outputs.{output.name}.parameters.")
    return request


def binary_outputs(request: InferenceRequest, names: Sequence[str]) -> set[str]:
    """Which of the outputs ``names`` to write as binary: those asked with ``binary_data: true``, and, with
    ``binary_data_output: true``, every other one not asked with ``binary_data: false``."""
    every = bool(_flag(request.parameters, "binary_data_output", "parameters."))
    asked = {o.name: _flag(o.parameters, "binary_data", f"outputs.{o.name}.parameters.") for o in request.outputs or []}
    return {name for name in names if (asked.get(name) if asked.get(name) is not None else every)}


def render(response: InferenceResponse, chunks: list[bytes]) -> Response:
    """The response's JSON, then the binary outputs' bytes in the order of its outputs."""
    text = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    headers = {HEADER: str(len(text))}
    return Response(b"".join([text, *chunks]), media_type="application/octet-stream", headers=headers)
