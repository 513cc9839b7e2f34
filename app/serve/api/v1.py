"""/v1: the REST API. Handlers only decode and encode; the data plane does the work."""

from __future__ import annotations

import email.message
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.data.schema import FeatureSpec
from app.errors import SchemaError
from app.gate.gate import GateResult
from app.gate.spec import Component
from app.serve.api import strict_json
from app.serve.api.deps import DataPlaneDep
from app.serve.api.schemas_v1 import (
    ErrorResponse,
    GateSummaryOut,
    GateThresholdsOut,
    ModelListResponse,
    ModelMetadataResponse,
    ModelSummaryOut,
    PredictRequest,
    PredictResponse,
)
from app.serve.dataplane import Columns, InferenceResult, RequestOptions, ScoringRequest
from app.serve.repository import ModelState, ServedModel


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON (none, application/json, application/*+json)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class StrictJsonRoute(APIRoute):
    """A route whose JSON body is parsed strictly (app.serve.api.strict_json) before FastAPI validates it:
    invalid UTF-8, a duplicated key or a lone surrogate is a 422 whose ``loc`` names the place, never the value.
    The request model, and so the OpenAPI schema, is the route's own."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method == "POST" and _is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    try:
                        request._json = strict_json.loads(body)  # what request.json() returns to FastAPI
                    except strict_json.JsonRefused as exc:
                        raise RequestValidationError([exc.error()]) from None
            return await handler(request)

        return strict_handler


router = APIRouter(prefix="/v1", tags=["v1"], route_class=StrictJsonRoute)
ERRORS = {
    404: {"model": ErrorResponse, "description": "Unknown model."},
    413: {"model": ErrorResponse, "description": "Body over the size limit."},
    422: {"model": ErrorResponse, "description": "A field is missing, unknown or invalid; `loc` names it."},
    503: {"model": ErrorResponse, "description": "The model is loading or failed verification."},
}


def _summary(entry: ServedModel) -> dict:
    ready = entry.state is ModelState.READY
    return {
        "name": entry.name,
        "state": entry.state.value,
        "ready": ready,
        "reason": entry.reason or None,
        "version": entry.version or None,
        "kind": entry.manifest.kind.value if ready else None,
    }


@router.get("/models", response_model=ModelListResponse, summary="List the models and their states")
def list_models(dataplane: DataPlaneDep) -> ModelListResponse:
    return ModelListResponse(models=[ModelSummaryOut(**_summary(e)) for e in dataplane.repository.entries()])


@router.get("/models/{name}", response_model=ModelMetadataResponse, responses=ERRORS, summary="A model's metadata")
def model_metadata(name: str, dataplane: DataPlaneDep) -> ModelMetadataResponse:
    entry = dataplane.repository.lookup(name)
    if entry.state is not ModelState.READY:
        return ModelMetadataResponse(**_summary(entry))
    m = entry.manifest
    return ModelMetadataResponse(
        **_summary(entry),
        sha256=m.weights.sha256,
        ranks=m.ranks,
        parameter_count=m.parameter_count,
        task=m.task.model_dump(mode="json"),
        features=m.features,
        gate=GateSummaryOut(
            target_fpr=m.gate.target_fpr,
            thresholds=GateThresholdsOut(**{c.value: t for c, t in m.gate.thresholds().items()}),
            calibration=m.gate.calibration,
            achieved=m.gate.achieved,
            warnings=m.gate.warnings,
        ),
        default_samples=m.default_samples,
        max_samples=dataplane.settings.max_samples,
        metrics=m.metrics or None,
    )


def _columns(request: PredictRequest, features: Sequence[FeatureSpec]) -> Columns:
    """Instances (records) -> columns, refusing missing and unknown keys by name."""
    names = [f.name for f in features]
    known = set(names)
    for row, instance in enumerate(request.instances):
        for key in instance:
            if key not in known:
                raise SchemaError(f"instances[{row}].{key}", f"unknown feature; expected {names}")
        for name in names:
            if name not in instance:
                raise SchemaError(f"instances[{row}].{name}", "missing feature")
    return {name: [instance[name] for instance in request.instances] for name in names}


def _nullable(values: np.ndarray) -> list[float | None]:
    """(N,) numbers -> Python floats, None where not finite (a rejected row's score)."""
    out: list[float | None] = values.tolist()
    for row in np.flatnonzero(~np.isfinite(values)).tolist():
        out[row] = None
    return out


def _component(gate: GateResult, component: Component, threshold: float | None = None) -> list[dict[str, Any]]:
    """One component's answer for every row, from its arrays in one pass each: ``ComponentOut``, or
    ``SupportOut`` for the support (which has no threshold)."""
    columns = zip(
        _nullable(gate.scores[component]),
        _nullable(gate.percentiles[component]),
        gate.flags[component].tolist(),
        strict=True,
    )
    if component is Component.SUPPORT:
        return [{"score": score, "percentile": percentile, "flag": flag} for score, percentile, flag in columns]
    return [
        {"score": score, "threshold": threshold, "percentile": percentile, "flag": flag}
        for score, percentile, flag in columns
    ]


def decode(name: str, request: PredictRequest) -> ScoringRequest:
    """The body -> the data plane's request (shared with the KServe V1 alias, app.serve.api.kserve_v1)."""
    options = RequestOptions(
        samples=request.samples,
        seed=request.seed,
        sampler=request.sampler,
        tolerance=request.tolerance,
        timeout_s=request.timeout_s,
    )
    return ScoringRequest(
        model=name,
        decode=lambda features: (_columns(request, features), options),
        locate=lambda feature, row: f"instances[{row}].{feature}",
    )


def encode(result: InferenceResult) -> dict[str, Any]:
    """The data plane's answer -> the /v1 body as plain data, ``PredictResponse``'s shape (its ``predictions``
    are also the KServe V1 answer). Built from the arrays column by column, not an object per row: the
    response model documents the shape, and the tests check the answers against it."""
    m, s, gate = result.manifest, result.scores, result.gate
    labels = m.task.labels
    thresholds = m.gate.thresholds()
    empty: list[Any] = [None] * result.rows
    probabilities = empty
    uncertainties = empty
    if s is not None:
        probabilities = [None if p is None else dict(zip(labels, p, strict=True)) for p in result.per_row(s.probs)]
        columns = np.stack([s.total, s.aleatoric, s.epistemic, s.std], axis=1)
        names = ("total", "aleatoric", "epistemic", "std")
        uncertainties = [None if u is None else dict(zip(names, u, strict=True)) for u in result.per_row(columns)]
    support = _component(gate, Component.SUPPORT)
    density = _component(gate, Component.DENSITY, thresholds[Component.DENSITY])
    epistemic = _component(gate, Component.EPISTEMIC, thresholds[Component.EPISTEMIC])
    predictions = [
        {
            "label": label,
            "probabilities": probs,
            "uncertainty": u,
            "gate": {"support": sup, "density": den, "epistemic": epi},
            "decision": decision.value,
            "reasons": reasons,
            "details": details,
        }
        for label, probs, u, sup, den, epi, decision, reasons, details in zip(
            result.labels,
            probabilities,
            uncertainties,
            support,
            density,
            epistemic,
            gate.decisions,
            gate.reasons,
            gate.details,
            strict=True,
        )
    ]
    mc_error = None
    if s is not None:
        mi = s.mc_error.mutual_information
        mc_error = {"probability": s.mc_error.probability, "mutual_information": mi if math.isfinite(mi) else None}
    return {
        "model": {"name": m.name, "version": m.version, "sha256": m.weights.sha256, "kind": m.kind.value},
        "samples": result.samples,
        "seed": None if s is None else s.plan.seed,
        "sampler": None if s is None else s.plan.sampler.value,
        "mc_error": mc_error,
        "predictions": predictions,
    }


def json_response(body: dict[str, Any]) -> Response:
    """``body`` as JSON, written by orjson (numbers as they are; NaN and infinities as null): the response
    model is the route's documentation, not a second validation of what ``encode`` built."""
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Predict with uncertainty and the gate's accept/refer/reject decision with reasons",
)
async def predict(name: str, request: PredictRequest, dataplane: DataPlaneDep) -> Response:
    return json_response(encode(await dataplane.infer(decode(name, request))))
