"""Export a sequence (LSTM) checkpoint's frozen bank to ONNX, validated against the torch engine's bank.

``model.onnx`` for a sequence network: inputs ``x`` float32 (N, T, d), the preprocessed steps right-padded to
T = ``manifest.sequence.max_length`` (fixed: the time loop is unrolled), and ``lengths`` int64 (N,); output
``head_outputs`` (S, N, k), the head's raw outputs per bank sample (logits, or for a gaussian likelihood a
standardised mean and a raw scale per target), exactly what ``SequenceMonteCarloEngine``'s ``bank`` sampler
returns. The S weight samples, drawn as the engine draws its bank (``model.sample(S, Generator(seed))``), are
constants of the graph; N is free. No sampling or local graph: ``OnnxInfo.sampling`` and ``local`` stay None.

Every kind exports: a Bayesian kind's bank is S draws, MC dropout's S masks, an ensemble's its M members and a
deterministic network's its one weight set (``num_samples``). Refused: a bank too large for one ONNX protobuf.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from app.bnn._base import LayerSample
from app.bnn.recurrent import BayesianLSTM, LSTMLayerSample, SequenceSample, step_mask
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import Sampler
from app.checkpoint.io import Checkpoint
from app.checkpoint.noise import HEAD_OUTPUT
from app.checkpoint.onnx_export import (
    DEFAULT_OPSET,
    ONNX_FILE,
    ExportReport,
    _to_onnx,
    write_bank_export,
)
from app.errors import CheckpointError, MissingExtra

SEQUENCE_INPUTS = ["x", "lengths"]
SEQUENCE_OUTPUT = HEAD_OUTPUT  # (S, N, k): per bank sample, the head's raw outputs
VALIDATION_ROWS = (1, 7, 48)  # batch sizes the graph is checked at: N = 1 and two ragged batches
MAX_CONSTANT_BYTES = 1_900_000_000  # a protobuf holds at most 2 GiB; keep room for the graph itself


class SequenceBankOutputs(nn.Module):
    """(x: (N, T, d), lengths: (N,)) -> head outputs (S, N, k) over a fixed bank of weight samples.

    ``BayesianLSTM.propagate`` less its lengths range check, which torch.export cannot trace (a data-dependent
    branch): the graph trusts ``lengths``; 0 leaves a row's state at zero and more than T counts as T.
    """

    def __init__(self, model: BayesianLSTM, bank: SequenceSample) -> None:
        super().__init__()
        self.model = model
        samples = _flat_samples(bank)
        self.kinds = [type(s) for s in samples]  # each map's sample type, rebuilt around the constants
        self.present = [[t is not None for t in s] for s in samples]  # MC dropout's first map has no mask
        self.flat = nn.ParameterList(
            nn.Parameter(t.detach().clone(), requires_grad=False) for s in samples for t in s if t is not None
        )

    def _bank(self) -> SequenceSample:
        samples, k = [], 0
        for kind, present in zip(self.kinds, self.present, strict=True):
            fields = []
            for has in present:
                fields.append(self.flat[k] if has else None)
                k += has
            samples.append(kind._make(fields))
        pairs = [LSTMLayerSample(samples[2 * i], samples[2 * i + 1]) for i in range(len(self.model.layers))]
        return SequenceSample(pairs, samples[-1])

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        weights = self._bank()
        mask = step_mask(lengths, x.shape[1])  # (T, N, 1): past a row's length its state is held
        h = x.unsqueeze(0)  # (1, N, T, d): the input is shared by every sample
        for layer, w in zip(self.model.layers, weights.layers, strict=True):
            h = layer.propagate(h, w, mask)
        return self.model.head.propagate(h[:, :, -1], weights.head)


def _flat_samples(bank: SequenceSample) -> list[LayerSample]:
    """Every map's sample in the network's order: per layer input then recurrent, then the head."""
    return [s for layer in bank.layers for s in layer] + [bank.head]


def bank_bytes(bank: SequenceSample) -> int:
    """Bytes of the bank's tensors: what the graph stores as constants."""
    return sum(t.numel() * t.element_size() for s in _flat_samples(bank) for t in s if t is not None)


def check_bank_fits(path: object, samples: int, size: int) -> None:
    """CheckpointError unless a bank of ``size`` bytes of constants fits one ONNX protobuf."""
    if size > MAX_CONSTANT_BYTES:
        raise CheckpointError(
            str(path),
            f"a bank of {samples} samples is {size / 1e9:.2f} GB of constants, over the 2 GiB an ONNX file "
            "holds; export fewer samples (--samples)",
        )


def check_within(path: object, worst: float, tolerance: float) -> None:
    """CheckpointError unless onnxruntime matched torch within ``tolerance`` (NaN fails too): nothing written."""
    if not worst <= tolerance:
        raise CheckpointError(
            str(path), f"onnxruntime and torch differ by {worst:.3g} > tolerance {tolerance:g}; not written"
        )


def sequence_bank_graph(model: BayesianLSTM, bank: SequenceSample, steps: int, opset: int = DEFAULT_OPSET) -> bytes:
    """The frozen-bank graph of ``model`` (on the CPU) over ``bank`` as ONNX bytes (not validated): inputs
    ``x`` (N, ``steps``, d) and ``lengths`` (N,), output ``head_outputs`` (S, N, k), N free."""
    rows = torch.export.Dim("rows")
    # 2 rows: torch.export would fix a size-1 axis; lengths 1 and T so both mask branches are traced alike.
    example = (torch.zeros(2, steps, model.spec.in_features), torch.tensor([steps, 1], dtype=torch.int64))
    return _to_onnx(
        SequenceBankOutputs(model, bank).eval(),
        example,
        SEQUENCE_INPUTS,
        [SEQUENCE_OUTPUT],
        {"x": {0: rows}, "lengths": {0: rows}},
        opset,
    )


def sequence_reference_inputs(checkpoint: Checkpoint, rows: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences to validate on: x (rows, T, d) float32, zero-padded past each length as the server pads,
    and lengths (rows,) int64, ragged, holding 1 and T. Row 0 is the training medians at every step."""
    manifest = checkpoint.manifest
    assert manifest.sequence is not None  # the caller dispatched on it
    steps, features = manifest.sequence.max_length, manifest.network.in_features
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, steps, features)).astype(np.float32)
    x[0] = manifest.preprocessing.typical_input()
    lengths = rng.integers(1, steps + 1, size=rows).astype(np.int64)
    lengths[: min(rows, 3)] = [steps, 1, steps][: min(rows, 3)]
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


@torch.no_grad()
def export_sequence_onnx(
    checkpoint: Checkpoint,
    samples: int | None = None,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Write a sequence checkpoint's ``model.onnx`` (bank of ``samples`` draws from ``seed``; the manifest's
    ``default_samples`` by default) into its folder, validate it with onnxruntime against the torch engine's
    bank on ragged reference sequences at several batch sizes, and record it in the manifest's ``onnx``
    section. Raises CheckpointError when they differ by more than ``tolerance`` or the bank is too large for
    one ONNX file; nothing is written then. Exports a CPU copy: the checkpoint's network is left as it was."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtra("onnxruntime", "onnx", "the ONNX export") from exc
    manifest = checkpoint.manifest
    path = checkpoint.path / ONNX_FILE
    if manifest.sequence is None or not isinstance(checkpoint.model, BayesianLSTM):
        raise CheckpointError(str(path), "not a sequence (LSTM) checkpoint: export it with export_onnx")
    opset = max(opset, DEFAULT_OPSET)  # as export_onnx: the dynamo exporter writes 18 and up
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    samples = model.num_samples(samples or manifest.default_samples)
    # The engine draws the bank exactly as the serving engine does: the graph's constants are its tensors.
    engine = SequenceMonteCarloEngine(model, samples, seed)
    assert engine._bank is not None  # samples ≥ 1
    check_bank_fits(path, samples, bank_bytes(engine._bank))
    steps = manifest.sequence.max_length
    data = sequence_bank_graph(model, engine._bank, steps, opset)
    worst = _validate(data, engine, samples, *sequence_reference_inputs(checkpoint), ort)
    check_within(path, worst, tolerance)
    return write_bank_export(checkpoint, data, samples, seed, tolerance, worst, ort.__version__)


def _validate(
    data: bytes, engine: SequenceMonteCarloEngine, samples: int, x: np.ndarray, lengths: np.ndarray, ort: object
) -> float:
    """The largest |onnxruntime − torch bank| over the reference sequences, run at each of
    :data:`VALIDATION_ROWS` batch sizes (the first rows hold lengths T and 1)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    diffs = []
    for rows in VALIDATION_ROWS:
        xs, ls = x[:rows], lengths[:rows]
        (onnx_out,) = session.run([SEQUENCE_OUTPUT], {"x": xs, "lengths": ls})
        torch_out, _ = engine.run(torch.from_numpy(xs), torch.from_numpy(ls), samples, None, Sampler.BANK)
        if onnx_out.shape != tuple(torch_out.shape):
            return float("inf")  # a graph of the wrong shape matches nothing
        diffs.append(np.abs(onnx_out - torch_out.numpy()).max())
    return float(np.max(diffs))  # NaN propagates, and fails the tolerance check
