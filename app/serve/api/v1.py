"""/v1: the REST API. Handlers only decode and encode; the data plane does the work."""

from __future__ import annotations

import math

from fastapi import APIRouter

from app.errors import SchemaError
from app.serve.api.deps import DataPlaneDep
from app.serve.api.schemas_v1 import (
    ErrorResponse,
    ModelListResponse,
    ModelMetadataResponse,
    ModelRef,
    ModelSummaryOut,
    MonteCarloErrorOut,
    OODGateOut,
    OODOut,
    PredictionOut,
    PredictRequest,
    PredictResponse,
    UncertaintyOut,
)
from app.serve.dataplane import InferenceResult
from app.serve.repository import ModelState, ServedModel

router = APIRouter(prefix="/v1", tags=["v1"])
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
        "reason": entry.reason or None,
        "version": entry.manifest.version if ready else None,
        "kind": entry.manifest.kind.value if ready else None,
    }


@router.get("/models", response_model=ModelListResponse, summary="List the models and their states")
def list_models(dataplane: DataPlaneDep) -> ModelListResponse:
    return ModelListResponse(models=[ModelSummaryOut(**_summary(e)) for e in dataplane.repository.entries()])


@router.get(
    "/models/{name}", response_model=ModelMetadataResponse, responses=ERRORS, summary="A model's metadata"
)
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
        ood=OODGateOut(
            score=m.ood.score, threshold=m.ood.threshold, target_fpr=m.ood.target_fpr, achieved_fpr=m.ood.achieved_fpr
        ),
        default_samples=m.default_samples,
        max_samples=dataplane.settings.max_samples,
        metrics=m.metrics or None,
    )


def _columns(request: PredictRequest, entry: ServedModel) -> dict[str, list[object]]:
    """Instances (records) -> columns, refusing missing and unknown keys by name."""
    names = [f.name for f in entry.manifest.features]
    known = set(names)
    for row, instance in enumerate(request.instances):
        for key in instance:
            if key not in known:
                raise SchemaError(f"instances[{row}].{key}", f"unknown feature; expected {names}")
        for name in names:
            if name not in instance:
                raise SchemaError(f"instances[{row}].{name}", "missing feature")
    return {name: [instance[name] for instance in request.instances] for name in names}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _encode(result: InferenceResult) -> PredictResponse:
    m, s = result.manifest, result.scores
    labels = m.task.labels
    predictions = [
        PredictionOut(
            label=label,
            probabilities=dict(zip(labels, probs, strict=True)),
            uncertainty=UncertaintyOut(total=total, aleatoric=aleatoric, epistemic=epistemic, std=std),
            ood=OODOut(score=epistemic, threshold=m.ood.threshold, percentile=percentile, flag=flagged),
            decision=decision.value,
        )
        for label, probs, total, aleatoric, epistemic, std, percentile, flagged, decision in zip(
            result.labels,
            s.probs.tolist(),
            s.total.tolist(),
            s.aleatoric.tolist(),
            s.epistemic.tolist(),
            s.std.tolist(),
            result.percentile.tolist(),
            result.flags.tolist(),
            result.decisions,
            strict=True,
        )
    ]
    return PredictResponse(
        model=ModelRef(name=m.name, version=m.version, sha256=m.weights.sha256, kind=m.kind.value),
        samples=result.samples,
        seed=result.seed,
        sampler=s.sampler,
        mc_error=MonteCarloErrorOut(
            probability=s.mc_error.probability, mutual_information=_finite_or_none(s.mc_error.mutual_information)
        ),
        predictions=predictions,
    )


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Predict with uncertainty, OOD flag and accept/refer decision",
)
async def predict(name: str, request: PredictRequest, dataplane: DataPlaneDep) -> PredictResponse:
    entry = dataplane.model(name)
    options = dataplane.options(
        entry, len(request.instances), request.samples, request.seed, request.sampler, request.tolerance
    )
    columns = _columns(request, entry)
    result = await dataplane.infer(entry, columns, options, lambda f, row: f"instances[{row}].{f}")
    return _encode(result)
