"""/v2's outputs, as the data plane's answer becomes them: one tensor per output (numpy, before any wire
format), the response parameters that say what ran, and the response body, JSON or with binary tensors
(api/v2_binary.py). gRPC writes the same tensors into its own message (app/serve/grpc/server.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi.responses import Response

from app.bnn.spec import INTERVAL_LEVELS
from app.checkpoint.manifest import Manifest, TaskType
from app.gate.gate import Decision
from app.gate.spec import Component
from app.serve.api import v2_binary
from app.serve.api.schemas_v2 import InferenceRequest, InferenceResponse, ResponseOutput, TensorMetadata
from app.serve.api.tensors import OutputTensor, to_bytes
from app.serve.backend import RegressionScores, Scores
from app.serve.dataplane import InferenceResult

CLASSIFIER_VECTORS = ("total_entropy", "aleatoric", "mutual_information", "predictive_std")
GATE_VECTORS = ("support_score", "support_percentile", "density_score", "density_percentile", "epistemic_percentile")
VECTORS = (*CLASSIFIER_VECTORS, *GATE_VECTORS)
REGRESSION_VECTORS = (
    "mean",
    *(f"interval_{round(level * 100)}_{side}" for level in INTERVAL_LEVELS for side in ("low", "high")),
    "variance_total",
    "variance_aleatoric",
    "variance_epistemic",
)
STRINGS = ("decision", "reasons", "label")
OUTPUT_NAMES = frozenset({"probabilities", *VECTORS, "ood_flag", *STRINGS})  # a classifier's
REGRESSION_OUTPUT_NAMES = frozenset({*REGRESSION_VECTORS, *GATE_VECTORS, "ood_flag", "decision", "reasons"})
DECISIONS = {d: d.value for d in Decision}


def _regression(manifest: Manifest) -> bool:
    return manifest.task.type is TaskType.REGRESSION


def output_names(manifest: Manifest) -> frozenset[str]:
    """The outputs a request for this model may ask for."""
    return REGRESSION_OUTPUT_NAMES if _regression(manifest) else OUTPUT_NAMES


def outputs_metadata(manifest: Manifest) -> list[TensorMetadata]:
    if _regression(manifest):
        return [
            *[TensorMetadata(name=name, datatype="FP64", shape=[-1]) for name in (*REGRESSION_VECTORS, *GATE_VECTORS)],
            TensorMetadata(name="ood_flag", datatype="BOOL", shape=[-1]),
            *[TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in ("decision", "reasons")],
        ]
    classes = len(manifest.task.labels or [])
    return [
        TensorMetadata(name="probabilities", datatype="FP64", shape=[-1, classes]),
        *[TensorMetadata(name=name, datatype="FP64", shape=[-1]) for name in VECTORS],
        TensorMetadata(name="ood_flag", datatype="BOOL", shape=[-1]),
        *[TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in STRINGS],
    ]


Available = dict[str, tuple[str, list[int], np.ndarray]]  # output -> (datatype, shape, flat or shaped values)


def _task_outputs(result: InferenceResult) -> Available:
    """The task's own outputs: a classifier's probabilities, entropies and label, or a regression's mean,
    intervals and variances (in the target's unit), NaN where a row is not scored."""
    s, n = result.scores, result.rows

    def scored(values: np.ndarray | None, *shape: int) -> np.ndarray:
        return np.full((n, *shape), np.nan) if values is None else result.spread(values)

    if _regression(result.manifest):
        r = s if isinstance(s, RegressionScores) else None
        outputs: Available = {"mean": ("FP64", [n], scored(None if r is None else r.mean))}
        for level in INTERVAL_LEVELS:
            for side, index in (("low", 0), ("high", 1)):
                values = None if r is None else r.intervals[level][index]
                outputs[f"interval_{round(level * 100)}_{side}"] = ("FP64", [n], scored(values))
        for part in ("total", "aleatoric", "epistemic"):
            outputs[f"variance_{part}"] = ("FP64", [n], scored(None if r is None else getattr(r, part)))
        return outputs
    c = s if isinstance(s, Scores) else None
    classes = len(result.manifest.task.labels or [])
    return {
        "probabilities": ("FP64", [n, classes], scored(None if c is None else c.probs, classes)),
        "total_entropy": ("FP64", [n], scored(None if c is None else c.total)),
        "aleatoric": ("FP64", [n], scored(None if c is None else c.aleatoric)),
        "mutual_information": ("FP64", [n], scored(None if c is None else c.epistemic)),
        "predictive_std": ("FP64", [n], scored(None if c is None else c.std)),
    }


def output_tensors(result: InferenceResult, request: InferenceRequest) -> list[OutputTensor]:
    """The requested outputs (default: all the task's), in the order asked."""
    gate, n = result.gate, result.rows

    def strings(values: list[str]) -> np.ndarray:
        return np.array(values, dtype=object)

    available: Available = {
        **_task_outputs(result),
        "support_score": ("FP64", [n], gate.scores[Component.SUPPORT]),
        "support_percentile": ("FP64", [n], gate.percentiles[Component.SUPPORT]),
        "density_score": ("FP64", [n], gate.scores[Component.DENSITY]),
        "density_percentile": ("FP64", [n], gate.percentiles[Component.DENSITY]),
        "epistemic_percentile": ("FP64", [n], gate.percentiles[Component.EPISTEMIC]),
        "ood_flag": ("BOOL", [n], ~gate.accepted),
        "decision": ("BYTES", [n], strings(list(map(DECISIONS.__getitem__, gate.decisions)))),
        "reasons": ("BYTES", [n], strings(list(map(",".join, gate.reasons)))),
    }
    if not _regression(result.manifest):
        available["label"] = ("BYTES", [n], result.labels_or(""))  # "" where the gate rejected the row
    wanted = [o.name for o in request.outputs] if request.outputs else list(available)
    return [OutputTensor(name, *available[name][:2], available[name][2].ravel()) for name in wanted]


def response_parameters(result: InferenceResult) -> dict[str, Any]:
    """What ran: samples, seed, sampler, the Monte Carlo error bounds (a regression's: of its mean), a
    regression's unit, and the weights' sha256."""
    s = result.scores
    parameters: dict[str, Any] = {"samples": result.samples}
    if isinstance(s, RegressionScores):
        parameters.update(seed=s.plan.seed, sampler=s.plan.sampler.value, mc_error_mean=s.mean_error)
    elif s is not None:
        parameters.update(seed=s.plan.seed, sampler=s.plan.sampler.value, mc_error_probability=s.mc_error.probability)
        if math.isfinite(s.mc_error.mutual_information):
            parameters["mc_error_mutual_information"] = s.mc_error.mutual_information
    if _regression(result.manifest) and result.manifest.task.unit:
        parameters["unit"] = result.manifest.task.unit  # the unit of mean, intervals and (squared) variances
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
