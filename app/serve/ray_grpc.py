"""The Open Inference Protocol's gRPC service through Ray Serve's gRPC proxy (``grpc_options`` in
deploy/ray/serve.yaml): each RPC of ``inference.GRPCInferenceService`` is a method of the replica that runs
sbnn's own servicer (:class:`~app.serve.grpc.server.InferenceServicer`: the same data plane, errors, metrics and
audit as ``sbnn serve``'s gRPC port), behind the same API keys.

Ray's proxy hands a method the request and a :class:`ray.serve.grpc_util.RayServegRPCContext`; that context
cannot abort a call, so an error sets its status code and details and the method returns an empty response,
which the proxy sends with that status. It carries no deadline: Ray's own request timeout bounds a call.
"""

from __future__ import annotations

from typing import Any

import grpc

from app.serve.auth import decide, grpc_scope
from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc.server import SERVICE, InferenceServicer

RESPONSES: dict[str, type] = {
    "ServerLive": pb.ServerLiveResponse,
    "ServerReady": pb.ServerReadyResponse,
    "ServerMetadata": pb.ServerMetadataResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelInfer": pb.ModelInferResponse,
}
# Ray's proxy needs the service's protobuf functions to decode requests for it.
SERVICER_FUNCTIONS = ["app.serve.grpc.open_inference_grpc_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"]


class Aborted(Exception):
    """A servicer's ``context.abort``: its status is on the Ray context already."""


class RayContext:
    """What :class:`InferenceServicer` asks of a ``grpc.aio`` context, over Ray's."""

    def __init__(self, ray_context: Any) -> None:
        self.ray_context = ray_context

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self.ray_context.invocation_metadata())

    def time_remaining(self) -> float | None:
        return None  # Ray's context carries no deadline

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.ray_context.set_code(code)
        self.ray_context.set_details(details)
        raise Aborted


def rpc(method: str) -> Any:
    """A replica method for one RPC of the service: Ray's gRPC proxy calls it by the RPC's name, passing Ray's
    context as ``grpc_context``; ``self.app`` is the app Ray built in the replica."""

    async def handler(self: Any, request: Any, grpc_context: Any) -> Any:
        return await call(self.app, method, request, grpc_context)

    handler.__name__ = handler.__qualname__ = method
    return handler


async def call(app: Any, method: str, request: Any, ray_context: Any) -> Any:
    """Run ``method`` of sbnn's servicer on ``app`` (the replica's FastAPI app) for Ray's proxy."""
    context = RayContext(ray_context)
    header = dict(context.invocation_metadata()).get("authorization")
    status, why, _ = decide(app.state.keys, header, grpc_scope(f"/{SERVICE}/{method}"))
    if status:
        ray_context.set_code(grpc.StatusCode.UNAUTHENTICATED if status == 401 else grpc.StatusCode.PERMISSION_DENIED)
        ray_context.set_details(why)
        return RESPONSES[method]()
    servicer = InferenceServicer(app.state.dataplane, app.state.keys, app.state.trail)
    try:
        return await getattr(servicer, method)(request, context)
    except Aborted:
        return RESPONSES[method]()
