"""KServe V1 protocol aliases: server liveness at ``/`` and ``POST /v1/models/{name}:predict``.

Only the routes whose path or shape differs from sbnn's own /v1 live here; model listing and readiness are the
canonical ``GET /v1/models`` and ``GET /v1/models/{name}`` (app.serve.api.v1), which carry ``ready``. The
predict alias decodes with /v1's ``decode`` and makes the same one data-plane call, so an instance gets the
same answer as on ``/v1/models/{name}/predict`` for the same samples and seed (docs/api.md, "KServe V1").
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.serve.api import v1
from app.serve.api.deps import DataPlaneDep
from app.serve.api.schemas_v1 import KServePredictResponse, LiveResponse, PredictRequest

router = APIRouter(tags=["kserve-v1"], route_class=v1.StrictJsonRoute)


@router.get("/", response_model=LiveResponse, summary="KServe V1 server liveness (alias of /v2/health/live)")
async def live() -> LiveResponse:  # async: a probe needs no thread-pool hop
    return LiveResponse(status="alive")


@router.post(
    "/v1/models/{name}:predict",
    response_model=KServePredictResponse,
    responses=v1.ERRORS,
    summary="KServe V1 predict: {instances} -> {predictions}, one sbnn prediction object per instance "
    "(alias of POST /v1/models/{name}/predict)",
)
async def kserve_predict(name: str, request: PredictRequest, dataplane: DataPlaneDep) -> Response:
    body = v1.encode(await dataplane.infer(v1.decode(name, request)))
    return v1.json_response({"predictions": body["predictions"]})
