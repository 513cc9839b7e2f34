"""The gRPC surface: ``inference.GRPCInferenceService`` over the same data plane as /v2, and ``grpc.health.v1``.

A ModelInfer request becomes the /v2 wire request (``InferenceRequest``): typed ``contents`` or
``raw_input_contents`` (little-endian; BYTES elements each prefixed by a 4-byte little-endian length) → the
tensor's flat data (FP32/FP64 NaN: a missing value, as JSON's null). From there it walks /v2's corridor
unchanged (``v2._decode`` → ``DataPlane.infer`` → ``v2._encode``), so validation, limits, the gate, metrics and
messages are /v2's. Outputs go back as typed contents, or as ``raw_output_contents`` when the request sent raw
inputs (a missing FP64 value, a rejected row's, is NaN). Errors map to status codes with /v2's messages:
INVALID_ARGUMENT (400), NOT_FOUND (404), UNAVAILABLE (503).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from app.errors import SchemaError
from app.serve.api import v2
from app.serve.api.schemas_v2 import InferenceRequest, InferenceResponse
from app.serve.dataplane import DataPlane
from app.serve.errors import ModelNotFound, ModelNotReady, RequestRejected
from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.repository import ModelState

log = logging.getLogger("sbnn.serve.grpc")
SERVICE = "inference.GRPCInferenceService"
# Each datatype's typed contents field and its little-endian dtype in raw contents.
CONTENTS = {
    "BOOL": ("bool_contents", "|b1"),
    "INT8": ("int_contents", "<i1"),
    "INT16": ("int_contents", "<i2"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "UINT8": ("uint_contents", "<u1"),
    "UINT16": ("uint_contents", "<u2"),
    "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "FP16": (None, "<f2"),  # no typed contents field: raw only
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
    "BYTES": ("bytes_contents", None),
}
T = TypeVar("T")


def _missing_as_none(values: list[Any], datatype: str) -> list[Any]:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values] if datatype[:2] == "FP" else values


def _bytes_elements(field: str, raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise RequestRejected(field, "raw BYTES contents end inside a 4-byte length prefix")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise RequestRejected(field, f"raw BYTES element of {size} bytes runs past the contents")
        out.append(raw[at : at + size])
        at += size
    return out


def _text(field: str, elements: list[bytes]) -> list[str]:
    try:
        return [e.decode("utf-8") for e in elements]
    except UnicodeDecodeError:
        raise RequestRejected(field, "BYTES element is not valid UTF-8") from None


def _raw_data(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> list[Any]:
    field = f"inputs.{tensor.name}"
    if tensor.datatype not in CONTENTS:
        raise RequestRejected(field, f"unknown datatype {tensor.datatype}; expected one of {sorted(CONTENTS)}")
    if tensor.datatype == "BYTES":
        return _text(field, _bytes_elements(field, raw))
    dtype = np.dtype(CONTENTS[tensor.datatype][1])
    if len(raw) % dtype.itemsize:
        raise RequestRejected(field, f"raw contents of {len(raw)} bytes are not a whole number of {tensor.datatype}")
    return _missing_as_none(np.frombuffer(raw, dtype=dtype).tolist(), tensor.datatype)


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    field = f"inputs.{tensor.name}"
    if tensor.datatype not in CONTENTS:
        raise RequestRejected(field, f"unknown datatype {tensor.datatype}; expected one of {sorted(CONTENTS)}")
    name = CONTENTS[tensor.datatype][0]
    if name is None:
        raise RequestRejected(field, f"{tensor.datatype} has no typed contents; send raw_input_contents")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != name]
    if others:
        raise RequestRejected(f"{field}.contents", f"datatype {tensor.datatype} takes {name}, got {others[0]}")
    values = list(getattr(tensor.contents, name))
    if tensor.datatype == "BYTES":
        return _text(field, values)
    return _missing_as_none(values, tensor.datatype)


def _parameter(value: pb.InferParameter) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def _parameters(parameters: Any) -> dict[str, Any] | None:
    decoded = {key: _parameter(value) for key, value in parameters.items()}
    return {key: value for key, value in decoded.items() if value is not None} or None


def _request(message: pb.ModelInferRequest) -> InferenceRequest:
    """The gRPC request as /v2's wire request (pydantic's errors are /v2's 400s)."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise RequestRejected("raw_input_contents", f"{len(raw)} raw contents for {len(message.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        if raw and tensor.HasField("contents"):
            raise RequestRejected(f"inputs.{tensor.name}.contents", "not allowed together with raw_input_contents")
        data = _raw_data(tensor, raw[i]) if raw else _typed_data(tensor)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.parameters:
            entry["parameters"] = _parameters(tensor.parameters)
        inputs.append({**entry, "data": data})
    body: dict[str, Any] = {"inputs": inputs}
    if message.id:
        body["id"] = message.id
    if message.parameters:
        body["parameters"] = _parameters(message.parameters)
    if message.outputs:
        body["outputs"] = [{"name": output.name} for output in message.outputs]
    return InferenceRequest.model_validate(body)


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _contents(datatype: str, data: list[Any]) -> list[Any]:
    if datatype == "BYTES":
        return [str(v).encode("utf-8") for v in data]
    if datatype == "FP64":
        return [math.nan if v is None else v for v in data]
    return data


def _raw(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return np.asarray(values, dtype=CONTENTS[datatype][1]).tobytes()


def _response(response: InferenceResponse, raw: bool) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
    )
    for key, value in (response.parameters or {}).items():
        _set_parameter(message.parameters[key], value)
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        values = _contents(output.datatype, output.data)
        if raw:
            message.raw_output_contents.append(_raw(output.datatype, values))
        else:
            getattr(tensor.contents, CONTENTS[output.datatype][0]).extend(values)
    return message


def _invalid(exc: ValidationError) -> str:
    """A pydantic error as /v2's 400 words it (app.serve.app: the first error, its location joined)."""
    first = exc.errors()[0]
    return f"{'.'.join(['body', *(str(p) for p in first['loc'])])}: {first['msg']}"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Each RPC calls what the matching /v2 route calls; errors are aborted with /v2's messages."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, model: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await work()
        except ModelNotFound as exc:
            code, message = grpc.StatusCode.NOT_FOUND, str(exc)
        except ModelNotReady as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except (SchemaError, RequestRejected) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}"
        except ValidationError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, _invalid(exc)
        finally:
            known = model if model in self.dataplane.repository.names() else ("unknown" if model else "")
            route = f"/{SERVICE}/{method}"
            self.dataplane.metrics.request_duration.labels(known, route, code.name).observe(
                time.perf_counter() - started
            )
        await context.abort(code, message)
        raise AssertionError("abort raises")  # pragma: no cover

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.dataplane.repository.ready)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        meta = v2.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        async def work() -> pb.ModelReadyResponse:
            if request.version:
                v2._versioned(request.version, request.name, self.dataplane)
            entry = self.dataplane.repository.lookup(request.name)
            return pb.ModelReadyResponse(ready=entry.state is ModelState.READY)

        return await self._call("ModelReady", context, request.name, work)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            if request.version:
                v2._versioned(request.version, request.name, self.dataplane)
            meta = v2._model_metadata(request.name, self.dataplane)
            tensors = [pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in meta.inputs]
            outputs = [pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in meta.outputs]
            return pb.ModelMetadataResponse(
                name=meta.name, versions=meta.versions, platform=meta.platform, inputs=tensors, outputs=outputs
            )

        return await self._call("ModelMetadata", context, request.name, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        async def work() -> pb.ModelInferResponse:
            if request.model_version:
                v2._versioned(request.model_version, request.model_name, self.dataplane)
            body = _request(request)
            answer = v2._encode(await self.dataplane.infer(v2._decode(request.model_name, body)), body)
            return _response(answer, raw=bool(request.raw_input_contents))

        return await self._call("ModelInfer", context, request.model_name, work)


class GrpcServer:
    """A ``grpc.aio`` server on the app's event loop: the inference service and the health service ("" is
    SERVING while the process runs; ``inference.GRPCInferenceService`` once every model folder was tried)."""

    def __init__(self, dataplane: DataPlane, host: str, port: int, max_message_bytes: int) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(options=options)
        self.health = health.aio.HealthServicer()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{host}:{port}"

    async def start(self) -> None:
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC: cannot listen on {self.address}: {exc}") from None
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("gRPC listening on %s", self.address)

    async def mark_ready(self) -> None:
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
