"""/v2: the Open Inference Protocol (KServe v2) REST API.

Inputs: one tensor per feature, shape [N] (or [N, 1]); numeric features take any numeric datatype, categorical
ones BYTES; a sequence model's are [N, T] with ``lengths`` [N] (api/v2_sequences.py); a text model's is one BYTES
tensor ``text`` [N] of UTF-8 texts. Outputs: probabilities
[N, C], total_entropy, aleatoric, mutual_information, predictive_std, the gate's support_score,
support_percentile, density_score, density_percentile, epistemic_percentile [N] (FP64; null where the gate
rejected the row, which is not scored), ood_flag [N] (BOOL: not accepted), decision, reasons (comma-separated)
and label [N] (BYTES; label "" for a rejected row); a regression's mean, interval_{50,90,95}_{low,high} and
variance_{total,aleatoric,epistemic} replace the classifier's own. Request parameters may carry
``samples``, ``seed``, ``sampler`` and ``tolerance``; the response echoes what ran (and the weights' sha256).
The body is JSON, or JSON then binary tensor data (api/v2_binary.py); outputs are written by api/v2_outputs.py.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.bnn.spec import Sampler
from app.checkpoint.manifest import Manifest
from app.data.schema import FeatureKind, FeatureSpec
from app.serve.api import repository as repository_api
from app.serve.api import v2_binary, v2_outputs, v2_sequences
from app.serve.api.deps import DataPlaneDep
from app.serve.api.schemas_v2 import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    NotReadyModel,
    ReadyResponse,
    RequestInput,
    ServerMetadataResponse,
    TensorMetadata,
)
from app.serve.api.tensors import check_datatype, check_feature_datatype, check_integers
from app.serve.backend import LENGTHS_INPUT, BackendKind
from app.serve.dataplane import Columns, DataPlane, Decoded, RequestOptions, ScoringRequest
from app.serve.errors import RequestRejected
from app.serve.repository import ModelState

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
ERRORS = {
    400: {"model": ErrorResponse, "description": "Malformed request: the message names the tensor and the reason."},
    404: {"model": ErrorResponse, "description": "Unknown model."},
    503: {"model": ErrorResponse, "description": "The model is loading or failed verification."},
}


PLATFORMS = {BackendKind.TORCH: "sbnn_pytorch", BackendKind.ONNX: "sbnn_onnxruntime"}
PARAMETER_NAMES = ("samples", "seed", "sampler", "tolerance", "timeout", "binary_data_output")


@router.get("", response_model=ServerMetadataResponse, summary="Server metadata")
def server_metadata() -> ServerMetadataResponse:
    try:
        version = metadata.version("sbnn")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return ServerMetadataResponse(
        name="sbnn", version=version, extensions=[v2_binary.EXTENSION, repository_api.EXTENSION]
    )


@router.get("/health/live", response_model=LiveResponse, summary="Liveness")
async def live() -> LiveResponse:  # async: a probe needs no thread-pool hop
    return LiveResponse(live=True)


@router.get(
    "/health/ready",
    response_model=ReadyResponse,
    response_model_exclude_none=True,
    responses={503: {"model": ReadyResponse, "description": "Not ready: loading, no model, or models failed."}},
    summary="Readiness: 200 once every model asked for is loaded and warm (SBNN_READY_WHEN=any: one of them)",
)
async def ready(dataplane: DataPlaneDep) -> Any:
    repository = dataplane.repository
    if repository.ready:
        return ReadyResponse(ready=True)
    waiting = repository.not_ready()
    models = [NotReadyModel(name=m.name, version=m.version, state=m.state.value, reason=m.reason) for m in waiting]
    if not repository.loaded.is_set():
        reason = "loading models"
    elif not repository.names():
        reason = f"the model repository '{repository.root.name}' holds no model folder"
    else:
        failed = sum(m.state is ModelState.FAILED for m in waiting)
        reason = f"{len(waiting)} model versions not ready ({failed} failed)" if waiting else "no model is ready"
    body = ReadyResponse(ready=False, reason=reason, models=models)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503)


async def _model_ready(name: str, dataplane: DataPlaneDep) -> Any:
    return model_ready(name, None, dataplane)


def model_ready(name: str, version: str | None, dataplane: DataPlane) -> Any:
    """A model's readiness, of one version or of the version a request without one gets."""
    entry = dataplane.repository.lookup(name, version)
    is_ready = entry.state is ModelState.READY
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


def _model_metadata(name: str, dataplane: DataPlaneDep) -> ModelMetadataResponse:
    return model_metadata(name, None, dataplane)


def model_metadata(name: str, version: str | None, dataplane: DataPlane) -> ModelMetadataResponse:
    """A model's metadata: of one version, or of the version a request without one gets (every ready version
    listed)."""
    model = dataplane.model(name, version)
    manifest = model.manifest
    assert model.backend is not None  # a ready model has its backend
    # A sequence model's per-step features are [N, T] with each sequence's steps; ``lengths`` [N] says how many.
    shape = [-1] if manifest.sequence is None else [-1, -1]
    inputs = [
        TensorMetadata(name=f.name, datatype="FP64" if f.kind is FeatureKind.NUMERIC else "BYTES", shape=shape)
        for f in manifest.features
    ]
    if manifest.sequence is not None:
        inputs.append(TensorMetadata(name=LENGTHS_INPUT, datatype="INT64", shape=[-1]))
    if manifest.text is not None:  # one UTF-8 text per row
        inputs.append(TensorMetadata(name=manifest.text.field, datatype="BYTES", shape=[-1]))
    return ModelMetadataResponse(
        name=name,
        versions=[m.version for m in dataplane.repository.versions(name) if m.state is ModelState.READY],
        platform=PLATFORMS[model.backend.kind],
        inputs=inputs,
        outputs=v2_outputs.outputs_metadata(manifest),
    )


def _values(tensor: RequestInput, field: str) -> list[Any] | np.ndarray:
    """The N values of a [N] (flat data) or [N, 1] (flat or nested [[v], …]) tensor."""
    shape, data = tensor.shape, tensor.data
    if any(d < 0 for d in shape) or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise RequestRejected(field, f"shape must be [N] or [N, 1], got {shape}")
    if not isinstance(data, np.ndarray) and any(isinstance(v, list) for v in data):  # an array came flat
        nested_ok = len(shape) == 2 and all(
            isinstance(v, list) and len(v) == 1 and not isinstance(v[0], list) for v in data
        )
        if not nested_ok:
            raise RequestRejected(field, f"nested data does not match shape {shape}")
        data = [v[0] for v in data]
    if len(data) != shape[0]:
        raise RequestRejected(field, f"shape {shape} holds {math.prod(shape)} values, data has {len(data)}")
    return data


def _check_tensor(tensor: RequestInput, kind: FeatureKind) -> list[Any] | np.ndarray:
    """Datatype and shape of one input tensor, and integer datatypes' ranges -> its N values (each value is
    checked against the feature by the model's preprocessing)."""
    field = f"inputs.{tensor.name}"
    values = _values(tensor, field)
    check_feature_datatype(field, tensor.datatype, kind)
    check_integers(tensor.datatype, values, lambda row: f"{field}[{row}]")
    return values


def _columns(request: InferenceRequest, features: Sequence[FeatureSpec]) -> Columns:
    """Input tensors -> columns, refusing unknown, duplicated and missing inputs and unequal N."""
    kinds = {f.name: f.kind for f in features}
    columns: Columns = {}
    for tensor in request.inputs:
        if tensor.name not in kinds:
            raise RequestRejected(f"inputs.{tensor.name}", f"unknown input; expected {list(kinds)}")
        if tensor.name in columns:
            raise RequestRejected(f"inputs.{tensor.name}", "input given more than once")
        columns[tensor.name] = _check_tensor(tensor, kinds[tensor.name])
    for name in kinds:
        if name not in columns:
            raise RequestRejected(f"inputs.{name}", "missing input")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise RequestRejected("inputs", f"every input needs the same N; got lengths {sorted(lengths)}")
    return columns


def _texts(request: InferenceRequest, field: str) -> list[Any]:
    """A text model's one BYTES input [N] (or [N, 1]) -> its N texts as sent (each a string; None where binary
    data's element is empty): the text corridor checks them (app.serve.texts)."""
    for tensor in request.inputs:
        if tensor.name != field:
            raise RequestRejected(f"inputs.{tensor.name}", f"unknown input; expected ['{field}']")
    if len(request.inputs) > 1:
        raise RequestRejected(f"inputs.{field}", "input given more than once")
    (tensor,) = request.inputs
    where = f"inputs.{field}"
    values = _values(tensor, where)
    check_datatype(where, tensor.datatype)
    if tensor.datatype != "BYTES":
        raise RequestRejected(where, f"a text input needs datatype BYTES, got {tensor.datatype}")
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _parameter(request: InferenceRequest, key: str) -> int | None:
    value = (request.parameters or {}).get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestRejected(f"parameters.{key}", f"must be an integer, got {value!r}")
    if key == "seed" and not 0 <= value < 2**63:
        raise RequestRejected("parameters.seed", f"must be in [0, 2^63), got {value}")
    if key == "timeout" and value < 1:
        raise RequestRejected("parameters.timeout", f"must be a positive number of microseconds, got {value}")
    return value


def _timeout_s(request: InferenceRequest) -> float | None:
    """Triton's ``timeout`` parameter: the request's deadline in microseconds."""
    microseconds = _parameter(request, "timeout")
    return None if microseconds is None else microseconds / 1e6


def _sampler(request: InferenceRequest) -> Sampler | None:
    value = (request.parameters or {}).get("sampler")
    if value is None:
        return None
    try:
        return Sampler(value)
    except ValueError:
        raise RequestRejected(
            "parameters.sampler", f"unknown sampler {value!r}; expected one of {[s.value for s in Sampler]}"
        ) from None


def _tolerance(request: InferenceRequest) -> float | None:
    value = (request.parameters or {}).get("tolerance")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestRejected("parameters.tolerance", f"must be a number, got {value!r}")
    return float(value)


def _refuse_misspelt(where: str, given: Sequence[str], known: Sequence[str]) -> None:
    """Fields a client adds are ignored, but one that reads like a known field (``parameter``, ``params``,
    ``output``, ``sample``) is a 400: ignoring it would silently answer another question than the one asked."""
    for key in given:
        if key in known:
            continue
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.75)
        if close:
            raise RequestRejected(f"{where}{key}", f"unknown field; did you mean '{close[0]}'?")


def _check_fields(request: InferenceRequest) -> None:
    _refuse_misspelt("body.", list(request.model_extra or {}), list(InferenceRequest.model_fields))
    _refuse_misspelt("parameters.", list(request.parameters or {}), PARAMETER_NAMES)
    for tensor in request.inputs:
        _refuse_misspelt(f"inputs.{tensor.name}.", list(tensor.model_extra or {}), list(RequestInput.model_fields))
    for output in request.outputs or []:
        _refuse_misspelt(f"outputs.{output.name}.", list(output.model_extra or {}), ["name", "parameters"])


def _decoded(request: InferenceRequest, manifest: Manifest, locator: v2_sequences.StepLocator) -> Decoded:
    """Misspelt fields refused, the requested outputs checked, then the input tensors -> columns (a sequence
    model's: api/v2_sequences.py), then the parameters -> options."""
    _check_fields(request)
    asked = [output.name for output in request.outputs or []]
    names = v2_outputs.output_names(manifest)
    for output in asked:
        if output not in names:
            raise RequestRejected(f"outputs.{output}", f"unknown output; available: {sorted(names)}")
        if asked.count(output) > 1:
            raise RequestRejected(f"outputs.{output}", "output requested more than once")
    for output in request.outputs or []:
        if "classification" in (output.parameters or {}):
            raise RequestRejected(
                f"outputs.{output.name}.parameters.classification",
                "the classification extension is not supported; ask for 'probabilities' and 'label'",
            )
    lengths, texts = None, None
    if manifest.text is not None:
        columns, texts = {}, _texts(request, manifest.text.field)
    elif manifest.sequence is None:
        columns = _columns(request, manifest.features)
    else:
        columns, lengths = v2_sequences.sequence_columns(request, manifest.features, locator)
    options = RequestOptions(
        samples=_parameter(request, "samples"),
        seed=_parameter(request, "seed"),
        sampler=_sampler(request),
        tolerance=_tolerance(request),
        timeout_s=_timeout_s(request),
    )
    return Decoded(columns, options, lengths, texts)


def decode(
    name: str, request: InferenceRequest, timeout_s: float | None = None, version: str | None = None
) -> ScoringRequest:
    """The scoring request of a /v2 body (``timeout_s``: the transport's deadline, gRPC's; ``version``: the
    model version the path named)."""
    locator = v2_sequences.StepLocator()  # learns, while decoding, which per-step features came packed
    return ScoringRequest(
        model=name,
        decode=lambda manifest: _decoded(request, manifest, locator),
        locate=lambda feature, row: f"inputs.{feature}[{row}]",
        locate_step=locator,
        option_field="parameters.",
        rows_field="inputs",
        timeout_s=timeout_s,
        version=version,
    )


async def _infer_at(name: str, version: str | None, http: Request, dataplane: DataPlane) -> Response:
    request = v2_binary.read_request(await http.body(), http.headers.get(v2_binary.HEADER))
    return v2_outputs.encode(await dataplane.infer(decode(name, request, version=version)), request)


async def _infer(name: str, http: Request, dataplane: DataPlaneDep) -> Response:
    return await _infer_at(name, None, http, dataplane)


async def _model_ready_versioned(name: str, version: str, dataplane: DataPlaneDep) -> Any:
    return model_ready(name, version, dataplane)


def _model_metadata_versioned(name: str, version: str, dataplane: DataPlaneDep) -> ModelMetadataResponse:
    return model_metadata(name, version, dataplane)


async def _infer_versioned(name: str, version: str, http: Request, dataplane: DataPlaneDep) -> Response:
    return await _infer_at(name, version, http, dataplane)


# The inference body is read by v2_binary (JSON, or JSON and binary data), so its schema is declared here.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"The binary tensor data extension: {v2_binary.HEADER} bytes of JSON, then data.",
            },
        },
    }
}


def openapi_schemas() -> dict[str, Any]:
    """InferenceRequest and the schemas it refers to, for the OpenAPI document's components."""
    schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "InferenceRequest": schema}


for path, endpoint, method, model, summary in [
    ("/models/{name}/ready", _model_ready, "GET", ModelReadyResponse, "Model readiness"),
    ("/models/{name}/versions/{version}/ready", _model_ready_versioned, "GET", ModelReadyResponse, "Model readiness"),
    ("/models/{name}", _model_metadata, "GET", ModelMetadataResponse, "Model metadata"),
    ("/models/{name}/versions/{version}", _model_metadata_versioned, "GET", ModelMetadataResponse, "Model metadata"),
    ("/models/{name}/infer", _infer, "POST", InferenceResponse, "Inference"),
    ("/models/{name}/versions/{version}/infer", _infer_versioned, "POST", InferenceResponse, "Inference"),
]:
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        response_model=model,
        responses=ERRORS,
        summary=summary,
        response_model_exclude_none=True,
        openapi_extra=INFER_BODY if method == "POST" else None,
    )
