"""/v2's outputs, as the data plane's answer becomes them: one tensor per output (numpy, before any wire
format), the response parameters that say what ran, and the response body, JSON or with binary tensors
(api/v2_binary.py). gRPC writes the same tensors into its own message (app/serve/grpc/server.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi.responses import Response

from app.checkpoint.manifest import Manifest
from app.gate.gate import Decision
from app.gate.spec import Component
from app.serve.api import v2_binary
from app.serve.api.schemas_v2 import InferenceRequest, InferenceResponse, ResponseOutput, TensorMetadata
from app.serve.api.tensors import OutputTensor, to_bytes
from app.serve.dataplane import InferenceResult

VECTORS = (
    "total_entropy",
    "aleatoric",
    "mutual_information",
    "predictive_std",
    "support_score",
    "support_percentile",
    "density_score",
    "density_percentile",
    "epistemic_percentile",
)
STRINGS = ("decision", "reasons", "label")
OUTPUT_NAMES = frozenset({"probabilities", *VECTORS, "ood_flag", *STRINGS})
DECISIONS = {d: d.value for d in Decision}


def outputs_metadata(manifest: Manifest) -> list[TensorMetadata]:
    classes = len(manifest.task.labels)
    return [
        TensorMetadata(name="probabilities", datatype="FP64", shape=[-1, classes]),
        *[TensorMetadata(name=name, datatype="FP64", shape=[-1]) for name in VECTORS],
        TensorMetadata(name="ood_flag", datatype="BOOL", shape=[-1]),
        *[TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in STRINGS],
    ]


def output_tensors(result: InferenceResult, request: InferenceRequest) -> list[OutputTensor]:
    """The requested outputs (default: all), in the order asked."""
    s, gate = result.scores, result.gate
    n, classes = result.rows, len(result.manifest.task.labels)

    def scored(values: np.ndarray | None, *shape: int) -> np.ndarray:
        return np.full((n, *shape), np.nan) if values is None else result.spread(values)

    def strings(values: list[str]) -> np.ndarray:
        return np.array(values, dtype=object)

    available: dict[str, tuple[str, list[int], np.ndarray]] = {
        "probabilities": ("FP64", [n, classes], scored(None if s is None else s.probs, classes)),
        "total_entropy": ("FP64", [n], scored(None if s is None else s.total)),
        "aleatoric": ("FP64", [n], scored(None if s is None else s.aleatoric)),
        "mutual_information": ("FP64", [n], scored(None if s is None else s.epistemic)),
        "predictive_std": ("FP64", [n], scored(None if s is None else s.std)),
        "support_score": ("FP64", [n], gate.scores[Component.SUPPORT]),
        "support_percentile": ("FP64", [n], gate.percentiles[Component.SUPPORT]),
        "density_score": ("FP64", [n], gate.scores[Component.DENSITY]),
        "density_percentile": ("FP64", [n], gate.percentiles[Component.DENSITY]),
        "epistemic_percentile": ("FP64", [n], gate.percentiles[Component.EPISTEMIC]),
        "ood_flag": ("BOOL", [n], ~gate.accepted),
        "decision": ("BYTES", [n], strings(list(map(DECISIONS.__getitem__, gate.decisions)))),
        "reasons": ("BYTES", [n], strings(list(map(",".join, gate.reasons)))),
        "label": ("BYTES", [n], result.labels_or("")),  # "" where the gate rejected the row
    }
    wanted = [o.name for o in request.outputs] if request.outputs else list(available)
    return [OutputTensor(name, *available[name][:2], available[name][2].ravel()) for name in wanted]


def response_parameters(result: InferenceResult) -> dict[str, Any]:
    """What ran: samples, seed, sampler, the Monte Carlo error bounds and the weights' sha256."""
    s = result.scores
    parameters: dict[str, Any] = {"samples": result.samples}
    if s is not None:
        parameters.update(seed=s.plan.seed, sampler=s.plan.sampler.value, mc_error_probability=s.mc_error.probability)
        if math.isfinite(s.mc_error.mutual_information):
            parameters["mc_error_mutual_information"] = s.mc_error.mutual_information
    parameters["model_sha256"] = result.manifest.weights.sha256
    return parameters


def encode(result: InferenceResult, request: InferenceRequest) -> Response:
    """The response body: every output's data in the JSON, or after it as binary where the request asked."""
    tensors = output_tensors(result, request)
    binary = v2_binary.binary_outputs(request, [t.name for t in tensors])
    outputs, chunks = [], []
    for t in tensors:
        if t.name in binary:
            chunks.append(to_bytes(t.datatype, t.values))
            parameters = {"binary_data_size": len(chunks[-1])}
            outputs.append(ResponseOutput(name=t.name, datatype=t.datatype, shape=t.shape, parameters=parameters))
        else:
            outputs.append(ResponseOutput(name=t.name, datatype=t.datatype, shape=t.shape, data=t.data()))
    response = InferenceResponse(
        model_name=result.manifest.name,
        model_version=result.manifest.version,
        id=request.id,
        parameters=response_parameters(result),
        outputs=outputs,
    )
    return v2_binary.render(response, chunks)
