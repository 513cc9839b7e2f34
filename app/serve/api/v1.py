"""/v1: the REST API. Handlers only decode and encode; the data plane does the work."""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.checkpoint.manifest import Manifest, TaskType
from app.data.schema import FeatureSpec
from app.errors import SchemaError
from app.serve.api import strict_json, v1_answers
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
from app.serve.backend import Scores
from app.serve.dataplane import Columns, Decoded, InferenceResult, RequestOptions, ScoringRequest
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


TEXT_METADATA = {"field", "max_length", "max_bytes", "max_tokens", "vocab_size"}  # a text model's, for clients
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
        sequence=None if m.sequence is None else m.sequence.model_dump(mode="json"),
        text=None if m.text is None else m.text.model_dump(mode="json", include=TEXT_METADATA),
    )


def _record_keys(where: str, record: dict[str, Any], names: list[str]) -> None:
    """Missing and unknown keys of one feature record refused by name (``where``: the record's path)."""
    known = set(names)
    for key in record:
        if key not in known:
            raise SchemaError(f"{where}.{key}", f"unknown feature; expected {names}")
    for name in names:
        if name not in record:
            raise SchemaError(f"{where}.{name}", "missing feature")


def _columns(request: PredictRequest, features: Sequence[FeatureSpec]) -> Columns:
    """Instances (records) -> columns, refusing missing and unknown keys by name."""
    names = [f.name for f in features]
    for row, instance in enumerate(request.instances):
        if not isinstance(instance, dict):
            raise SchemaError(f"instances[{row}]", "this model takes one feature record per instance")
        _record_keys(f"instances[{row}]", instance, names)
    return {name: [instance[name] for instance in request.instances] for name in names}  # type: ignore[call-overload]


def _sequences(request: PredictRequest, features: Sequence[FeatureSpec]) -> tuple[Columns, np.ndarray]:
    """Instances (lists of step records, oldest first) -> the columns of every step in order, and each
    instance's steps; refusing a record where a list belongs, an empty list, missing and unknown keys."""
    names = [f.name for f in features]
    lengths = np.empty(len(request.instances), dtype=np.int64)
    for row, instance in enumerate(request.instances):
        if not isinstance(instance, list):
            raise SchemaError(
                f"instances[{row}]", "a sequence model takes a list of time steps per instance (oldest first)"
            )
        if not instance:
            raise SchemaError(f"instances[{row}]", "at least one time step is required")
        for step, record in enumerate(instance):
            _record_keys(f"instances[{row}][{step}]", record, names)
        lengths[row] = len(instance)
    steps = [record for instance in request.instances for record in instance]
    return {name: [record[name] for record in steps] for name in names}, lengths  # type: ignore[index]


def _texts(request: PredictRequest, field: str) -> list[Any]:
    """Instances (``{"text": "..."}`` records, or the bare strings KServe's text runtimes take) -> the N texts as
    sent; refusing any other key (a text's type and size are the text corridor's to check, app.serve.texts)."""
    texts = []
    for row, instance in enumerate(request.instances):
        if isinstance(instance, str):
            texts.append(instance)
            continue
        if not isinstance(instance, dict):
            reason = f'a text model takes {{"{field}": "..."}} (or a string) per instance'
            raise SchemaError(f"instances[{row}]", reason)
        _record_keys(f"instances[{row}]", instance, [field])
        texts.append(instance[field])
    return texts


def _decoded(request: PredictRequest, manifest: Manifest, options: RequestOptions) -> Decoded:
    if manifest.text is not None:
        return Decoded({}, options, texts=_texts(request, manifest.text.field))
    if manifest.sequence is None:
        return Decoded(_columns(request, manifest.features), options)
    columns, lengths = _sequences(request, manifest.features)
    return Decoded(columns, options, lengths)


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
        decode=lambda manifest: _decoded(request, manifest, options),
        locate=lambda feature, row: f"instances[{row}].{feature}",
        locate_step=lambda feature, row, step: f"instances[{row}][{step}].{feature}",
    )


def _classifier_predictions(result: InferenceResult) -> list[dict[str, Any]]:
    """A classifier's predictions (``PredictionOut``), flat or sequence alike."""
    s, labels = result.scores, result.manifest.task.labels or []
    empty: list[Any] = [None] * result.rows
    probabilities = empty
    uncertainties = empty
    if isinstance(s, Scores):
        probabilities = [None if p is None else dict(zip(labels, p, strict=True)) for p in result.per_row(s.probs)]
        columns = np.stack([s.total, s.aleatoric, s.epistemic, s.std], axis=1)
        names = ("total", "aleatoric", "epistemic", "std")
        uncertainties = [None if u is None else dict(zip(names, u, strict=True)) for u in result.per_row(columns)]
    return [
        {"label": label, "probabilities": probs, "uncertainty": u, **parts}
        for label, probs, u, parts in zip(
            result.labels, probabilities, uncertainties, v1_answers.gate_parts(result), strict=True
        )
    ]


def encode(result: InferenceResult) -> dict[str, Any]:
    """The data plane's answer -> the /v1 body as plain data, ``PredictResponse``'s shape (its ``predictions``
    are also the KServe V1 answer). Built from the arrays column by column, not an object per row: the
    response model documents the shape, and the tests check the answers against it."""
    m, s = result.manifest, result.scores
    regression = m.task.type is TaskType.REGRESSION
    predictions = v1_answers.regression_predictions(result) if regression else _classifier_predictions(result)
    return {
        "model": {"name": m.name, "version": m.version, "sha256": m.weights.sha256, "kind": m.kind.value},
        "samples": result.samples,
        "seed": None if s is None else s.plan.seed,
        "sampler": None if s is None else s.plan.sampler.value,
        "mc_error": v1_answers.mc_error(result),
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
