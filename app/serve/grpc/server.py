"""The gRPC surface: ``inference.GRPCInferenceService`` over the same data plane as /v2, and ``grpc.health.v1``.

A ModelInfer request becomes the /v2 wire request (``InferenceRequest``): typed ``contents`` or
``raw_input_contents`` (``app.serve.api.tensors``: little-endian, BYTES elements length-prefixed) → the
tensor's flat data. gRPC has no null: a missing value is NaN (FP16/FP32/FP64) or an empty BYTES element. From
there it walks /v2's corridor unchanged (``v2.decode`` → ``DataPlane.infer`` → ``v2_outputs.output_tensors``), so
validation, limits, the gate, metrics and messages are /v2's. Outputs go back as typed contents, or as
``raw_output_contents`` when the request sent raw inputs (a rejected row's FP64 outputs are NaN). Errors map
to status codes with /v2's messages: INVALID_ARGUMENT (400), NOT_FOUND (404), UNAVAILABLE (503),
RESOURCE_EXHAUSTED (a message over the size limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from app.errors import SchemaError
from app.serve.api import v2, v2_outputs
from app.serve.api.schemas_v2 import InferenceRequest
from app.serve.api.tensors import check_datatype, from_bytes, missing_as_none, text, to_bytes
from app.serve.audit import AuditNote, AuditTrail
from app.serve.auth import KeyRing, KeyScope, decide, grpc_interceptor
from app.serve.dataplane import DataPlane, InferenceResult
from app.serve.errors import DeadlineExceeded, ModelNotFound, ModelNotReady, Overloaded, RequestRejected
from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.middleware import choose_request_id
from app.serve.repository import ModelState

log = logging.getLogger("sbnn.serve.grpc")
SERVICE = "inference.GRPCInferenceService"
# Each datatype's typed contents field (FP16 has none: raw contents only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
T = TypeVar("T")


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any] | np.ndarray:
    field = f"inputs.{tensor.name}"
    check_datatype(field, tensor.datatype)
    name = CONTENTS.get(tensor.datatype)
    if name is None:
        raise RequestRejected(field, f"{tensor.datatype} has no typed contents; send raw_input_contents")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != name]
    if others:
        raise RequestRejected(f"{field}.contents", f"datatype {tensor.datatype} takes {name}, got {others[0]}")
    values = getattr(tensor.contents, name)
    if tensor.datatype == "BYTES":
        return missing_as_none(text(field, list(values)), tensor.datatype)
    if tensor.datatype in ("FP32", "FP64"):
        return np.array(values, dtype=np.float64)  # NaN is a missing value, as in binary data
    return list(values)  # integers stay Python ints: /v2 checks each against its datatype's range


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
    inputs, data = [], []
    for i, tensor in enumerate(message.inputs):
        if raw and tensor.HasField("contents"):
            raise RequestRejected(f"inputs.{tensor.name}.contents", "not allowed together with raw_input_contents")
        data.append(from_bytes(f"inputs.{tensor.name}", tensor.datatype, raw[i]) if raw else _typed_data(tensor))
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.parameters:
            entry["parameters"] = _parameters(tensor.parameters)
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if message.id:
        body["id"] = message.id
    if message.parameters:
        body["parameters"] = _parameters(message.parameters)
    if message.outputs:
        body["outputs"] = [{"name": output.name} for output in message.outputs]
    request = InferenceRequest.model_validate(body)
    for tensor, values in zip(request.inputs, data, strict=True):
        tensor.data = values  # as read_request places binary data: an array is not revalidated as a list
    return request


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _response(result: InferenceResult, request: InferenceRequest, raw: bool) -> pb.ModelInferResponse:
    manifest = result.manifest
    message = pb.ModelInferResponse(model_name=manifest.name, model_version=manifest.version, id=request.id or "")
    for key, value in v2_outputs.response_parameters(result).items():
        _set_parameter(message.parameters[key], value)
    for output in v2_outputs.output_tensors(result, request):
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            message.raw_output_contents.append(to_bytes(output.datatype, output.values))
        elif output.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode("utf-8") for v in output.values.tolist())
        else:
            getattr(tensor.contents, CONTENTS[output.datatype]).extend(output.values.tolist())
    return message


def _invalid(exc: ValidationError) -> str:
    """A pydantic error as /v2's 400 words it (app.serve.app: the first error, its location joined)."""
    first = exc.errors()[0]
    return f"{'.'.join(['body', *(str(p) for p in first['loc'])])}: {first['msg']}"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Each RPC calls what the matching /v2 route calls; errors are aborted with /v2's messages."""

    def __init__(self, dataplane: DataPlane, keys: KeyRing, trail: AuditTrail) -> None:
        self.dataplane = dataplane
        self.keys = keys
        self.trail = trail

    def _audit(self, method: str, context: grpc.aio.ServicerContext) -> tuple[AuditNote, object] | None:
        """A ModelInfer's audit note (None for other RPCs or without a trail); UNAVAILABLE when the trail's
        queue is full under fail_closed, as REST's 503."""
        writer = self.trail.writer
        if method != "ModelInfer" or writer is None:
            return None
        if self.trail.behind():
            raise Overloaded("the audit trail is behind: retry shortly")
        return self.trail.open()

    def _record(
        self, opened: tuple[AuditNote, object], context: grpc.aio.ServicerContext, arrived: datetime, **details: Any
    ) -> None:
        current, token = opened
        self.trail.close(token)
        metadata = dict(context.invocation_metadata() or ())
        _, _, caller = decide(self.keys, metadata.get("authorization"), KeyScope.INFER)
        self.trail.record(
            current,
            arrived=arrived,
            request_id=choose_request_id(metadata.get("x-request-id")),
            key_id=None if caller is None else caller.key_id,
            surface="grpc",
            **details,
        )

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, model: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        started, code, arrived, opened = time.perf_counter(), grpc.StatusCode.OK, datetime.now(UTC), None
        try:
            opened = self._audit(method, context)
            return await work()
        except ModelNotFound as exc:
            code, message = grpc.StatusCode.NOT_FOUND, str(exc)
        except ModelNotReady as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except Overloaded as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, exc.reason
        except DeadlineExceeded as exc:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
        except (SchemaError, RequestRejected) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}"
        except ValidationError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, _invalid(exc)
        except asyncio.CancelledError:  # the client went away or its deadline passed: metrics and audit say so
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            known = model if model in self.dataplane.repository.names() else ("unknown" if model else "")
            route = f"/{SERVICE}/{method}"
            seconds = time.perf_counter() - started
            self.dataplane.metrics.request_duration.labels(known, route, code.name).observe(seconds)
            if opened is not None:
                self._record(opened, context, arrived, seconds=seconds, route=route, model=model, status=code.name)
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
            entry = self.dataplane.repository.lookup(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=entry.state is ModelState.READY)

        return await self._call("ModelReady", context, request.name, work)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = v2.model_metadata(request.name, request.version or None, self.dataplane)
            tensors = [pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in meta.inputs]
            outputs = [pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in meta.outputs]
            return pb.ModelMetadataResponse(
                name=meta.name, versions=meta.versions, platform=meta.platform, inputs=tensors, outputs=outputs
            )

        return await self._call("ModelMetadata", context, request.name, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        async def work() -> pb.ModelInferResponse:
            body = _request(request)
            # The client's gRPC deadline is the request's too: work past it is not worth doing.
            scoring = v2.decode(request.model_name, body, context.time_remaining(), request.model_version or None)
            result = await self.dataplane.infer(scoring)
            return _response(result, body, raw=bool(request.raw_input_contents))

        return await self._call("ModelInfer", context, request.model_name, work)


class GrpcServer:
    """A ``grpc.aio`` server on the app's event loop: the inference service and the health service ("" is
    SERVING while the process runs; ``inference.GRPCInferenceService`` while the server is ready)."""

    def __init__(
        self, dataplane: DataPlane, host: str, port: int, max_message_bytes: int, keys: KeyRing, trail: AuditTrail
    ) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(options=options, interceptors=[grpc_interceptor(keys)])
        self.health = health.aio.HealthServicer()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, keys, trail), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{host}:{port}"
        self._updates: set[asyncio.Task[None]] = set()  # health updates scheduled, held until they finish

    async def start(self) -> None:
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC: cannot listen on {self.address}: {exc}") from None
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("gRPC listening on %s", self.address)

    def set_ready(self, ready: bool) -> None:
        """The inference service's health: SERVING while the server is ready (``ModelRepository.ready``). A
        readiness listener (synchronous, on the loop): the update is scheduled, and held until it is done."""
        status = health_pb2.HealthCheckResponse
        task = asyncio.ensure_future(self.health.set(SERVICE, status.SERVING if ready else status.NOT_SERVING))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
