"""Export a text (Transformer) checkpoint's frozen bank to ONNX, validated against the torch engine's bank.

``model.onnx`` for a text network: inputs ``ids`` int64 (N, L), the tokenizer's ids right-padded to any
L ≤ ``manifest.text.max_length`` (position 0 the [CLS] token), and ``lengths`` int64 (N,); outputs
``head_outputs`` (S, N, k), the logits per bank sample, exactly what ``SequenceMonteCarloEngine``'s ``bank``
sampler returns, and ``features`` (N, d_model), the gate density's input (``BayesianTransformer.
pooled_features`` under the posterior mean). The S weight samples, drawn as the engine draws its bank, and the
posterior-mean draw are constants of the graph; N and L are free. The tokenizer stays outside the graph (its
JSON is in the checkpoint). Every kind exports, as for sequences (``app.checkpoint.onnx_sequence``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import Sampler
from app.bnn.transformer import BayesianTransformer, TransformerSample, key_mask
from app.checkpoint.io import Checkpoint
from app.checkpoint.noise import FEATURES_OUTPUT, HEAD_OUTPUT
from app.checkpoint.onnx_export import ONNX_FILE, ExportReport, _to_onnx, write_bank_export
from app.checkpoint.onnx_sequence import check_bank_fits, check_within
from app.errors import CheckpointError

TEXT_INPUTS = ["ids", "lengths"]
TEXT_OUTPUTS = [HEAD_OUTPUT, FEATURES_OUTPUT]
VALIDATION_ROWS = (1, 7, 32)  # batch sizes the graph is checked at: N = 1 and two ragged batches


def flatten(tree: Any) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """A draw's tensors in order, and the function that rebuilds the draw (NamedTuples, lists, None) from them."""
    if isinstance(tree, Tensor):
        return [tree], lambda leaves: leaves[0]
    if tree is None:
        return [], lambda leaves: None
    parts = [flatten(child) for child in tree]
    counts = [len(leaves) for leaves, _ in parts]

    def rebuild(leaves: list[Tensor]) -> Any:
        children, start = [], 0
        for (_, inner), count in zip(parts, counts, strict=True):
            children.append(inner(leaves[start : start + count]))
            start += count
        return children if isinstance(tree, list) else type(tree)._make(children)

    return [t for leaves, _ in parts for t in leaves], rebuild


class TextBankOutputs(nn.Module):
    """(ids: (N, L), lengths: (N,)) -> (head outputs (S, N, k), features (N, d)) over a fixed bank.

    ``BayesianTransformer.logits`` and ``pool``: ``propagate`` and ``pooled_features`` less their lengths range
    check, which torch.export cannot trace; the graph trusts ``lengths`` (1 ≤ length ≤ L, as the server
    guarantees).
    """

    def __init__(self, model: BayesianTransformer, bank: TransformerSample, mean: TransformerSample) -> None:
        super().__init__()
        self.model = model
        bank_leaves, self._bank = flatten(bank)
        mean_leaves, self._mean = flatten(mean)
        self.bank_tensors = nn.ParameterList(nn.Parameter(t.detach().clone(), requires_grad=False) for t in bank_leaves)
        self.mean_tensors = nn.ParameterList(nn.Parameter(t.detach().clone(), requires_grad=False) for t in mean_leaves)

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        weights, mean = self._bank(list(self.bank_tensors)), self._mean(list(self.mean_tensors))
        mask = key_mask(lengths, ids.shape[1])
        return self.model.logits(ids, weights, mask), self.model.pool(ids, mean, mask)


def text_reference_inputs(checkpoint: Checkpoint, rows: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids to validate on: (rows, L) int64 with [CLS] first and [PAD] past each length, L the model's
    max length, and lengths (rows,) int64, ragged, holding 1 and L."""
    manifest = checkpoint.manifest
    assert manifest.text is not None  # the caller dispatched on it
    steps, vocab = manifest.text.max_length, manifest.text.vocab_size
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(rows, steps)).astype(np.int64)
    ids[:, 0] = 2  # [CLS]
    lengths = rng.integers(1, steps + 1, size=rows).astype(np.int64)
    lengths[: min(rows, 3)] = [steps, 1, steps][: min(rows, 3)]
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0  # [PAD]
    return ids, lengths


@torch.no_grad()
def export_text_onnx(
    checkpoint: Checkpoint, samples: int | None, seed: int, opset: int, tolerance: float, ort: Any
) -> ExportReport:
    """Write a text checkpoint's ``model.onnx`` (bank of ``samples`` draws from ``seed``; the manifest's
    ``default_samples`` by default), validate both outputs with onnxruntime against torch on ragged reference
    ids at several batch sizes, and record it in the manifest. CheckpointError when they differ by more than
    ``tolerance`` or the bank is too large for one ONNX file; nothing is written then. Called by
    :func:`~app.checkpoint.onnx_export.export_onnx`, which imports ``ort`` (onnxruntime) and raises the opset."""
    manifest = checkpoint.manifest
    path = checkpoint.path / ONNX_FILE
    if manifest.text is None or not isinstance(checkpoint.model, BayesianTransformer):
        raise CheckpointError(str(path), "not a text (Transformer) checkpoint: export it with export_onnx")
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    samples = model.num_samples(samples or manifest.default_samples)
    engine = SequenceMonteCarloEngine(model, samples, seed)
    assert engine._bank is not None  # samples ≥ 1
    mean = model.mean_sample()
    check_bank_fits(path, samples, sum(t.numel() * t.element_size() for t in flatten((engine._bank, mean))[0]))
    steps = manifest.text.max_length
    rows, length = torch.export.Dim("rows"), torch.export.Dim("length", min=2, max=steps)
    example = (torch.full((2, steps), 2, dtype=torch.int64), torch.tensor([steps, 1], dtype=torch.int64))
    data = _to_onnx(
        TextBankOutputs(model, engine._bank, mean).eval(),
        example,
        TEXT_INPUTS,
        TEXT_OUTPUTS,
        {"ids": {0: rows, 1: length}, "lengths": {0: rows}},
        opset,
    )
    worst = _validate(data, model, engine, mean, samples, *text_reference_inputs(checkpoint), ort)
    check_within(path, worst, tolerance)
    return write_bank_export(checkpoint, data, samples, seed, tolerance, worst, ort.__version__)


def _validate(
    data: bytes,
    model: BayesianTransformer,
    engine: SequenceMonteCarloEngine,
    mean: TransformerSample,
    samples: int,
    ids: np.ndarray,
    lengths: np.ndarray,
    ort: Any,
) -> float:
    """The largest |onnxruntime − torch| of both outputs over the reference ids, at each of
    :data:`VALIDATION_ROWS` batch sizes, and once cut to half the length (L is free in the graph)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diffs = []
    half = ids.shape[1] // 2
    cases = [(ids[:rows], lengths[:rows]) for rows in VALIDATION_ROWS]
    cases.append((ids[:, :half], np.minimum(lengths, half)))
    for case_ids, case_lengths in cases:
        head, features = session.run(TEXT_OUTPUTS, {"ids": case_ids, "lengths": case_lengths})
        ti, tl = torch.from_numpy(np.ascontiguousarray(case_ids)), torch.from_numpy(case_lengths)
        torch_head, _ = engine.run(ti, tl, samples, None, Sampler.BANK)
        torch_features = model.pooled_features(ti, tl, mean)
        if head.shape != tuple(torch_head.shape) or features.shape != tuple(torch_features.shape):
            return float("inf")
        diffs += [np.abs(head - torch_head.numpy()).max(), np.abs(features - torch_features.numpy()).max()]
    return float(np.max(diffs))
