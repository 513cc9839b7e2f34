"""Export a regression MLP's frozen bank to ONNX, validated against torch on the very bank the server draws.

``model.onnx`` for a Gaussian-likelihood MLP: input ``x`` float32 (N, d), the preprocessed rows; output
``head_outputs`` (S, N, 2), each bank sample's standardised mean and raw scale, as a sequence model's bank graph
returns its head's outputs (app.checkpoint.onnx_sequence). The summaries (the mixture's mean, variances and
intervals in the target's unit) are the onnx backend's (app.serve.backend_onnx_heads). The S draws are those of
the torch backend's bank (``model.sample(S, Generator(seed))``), constants of the graph; N is free. No sampling
or local graph: the classifier graphs end in class probabilities, which a Gaussian head has none of.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from app.bnn._base import LayerSample
from app.bnn.network import BayesianMLP
from app.checkpoint.io import Checkpoint
from app.checkpoint.noise import HEAD_OUTPUT
from app.checkpoint.onnx_export import (
    DEFAULT_OPSET,
    ONNX_FILE,
    BankPredictive,
    ExportReport,
    _to_onnx,
    reference_inputs,
    write_bank_export,
)
from app.errors import CheckpointError

VALIDATION_ROWS = (1, 7, 64)  # batch sizes the graph is checked at


class BankHeadOutputs(BankPredictive):
    """x: (N, d) -> head outputs (S, N, k) over a fixed bank of weight samples."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.model.propagate(x, self._bank())


def regression_bank_graph(model: BayesianMLP, bank: list[LayerSample], opset: int = DEFAULT_OPSET) -> bytes:
    """The frozen-bank graph of a regression ``model`` (on the CPU) as ONNX bytes (not validated)."""
    return _to_onnx(
        BankHeadOutputs(model, bank).eval(),
        (torch.zeros(2, model.spec.in_features),),  # 2 rows: torch.export would fix a size-1 axis
        ["x"],
        [HEAD_OUTPUT],
        {"x": {0: torch.export.Dim("rows")}},
        opset,
    )


@torch.no_grad()
def export_regression_onnx(
    checkpoint: Checkpoint, samples: int | None, seed: int, opset: int, tolerance: float, ort: object
) -> ExportReport:
    """Write a regression MLP's ``model.onnx`` (bank of ``samples`` draws from ``seed``), validated with
    onnxruntime against torch at several batch sizes, and record it in the manifest; CheckpointError (nothing
    written) when they differ by more than ``tolerance``."""
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    assert isinstance(model, BayesianMLP)  # the caller dispatched on the manifest
    samples = model.num_samples(samples or checkpoint.manifest.default_samples)
    bank = model.sample(samples, torch.Generator().manual_seed(seed))
    data = regression_bank_graph(model, bank, max(opset, DEFAULT_OPSET))
    x = reference_inputs(checkpoint)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    diffs = []
    for rows in VALIDATION_ROWS:
        (onnx_out,) = session.run([HEAD_OUTPUT], {"x": x[:rows]})
        torch_out = model.propagate(torch.from_numpy(x[:rows]), bank).numpy()
        diffs.append(float(np.abs(onnx_out - torch_out).max()) if onnx_out.shape == torch_out.shape else np.inf)
    worst = float(np.max(diffs))  # NaN propagates, and fails the check
    if not worst <= tolerance:
        raise CheckpointError(
            str(checkpoint.path / ONNX_FILE),
            f"onnxruntime and torch differ by {worst:.3g} > tolerance {tolerance:g}; not written",
        )
    return write_bank_export(checkpoint, data, samples, seed, tolerance, worst, ort.__version__)  # type: ignore[attr-defined]
