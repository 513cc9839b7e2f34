"""Export a checkpoint's Monte Carlo predictive to ONNX, in two forms, each validated against torch.

(a) ``model.onnx``, the frozen bank as constants: preprocessed rows x: (N, d) -> the whole S-sample predictive
    summary: mean probabilities (N, C), total entropy, aleatoric, mutual information and the std of the
    predicted class's probability (N,), exactly what the torch engine's ``bank`` sampler computes. No random
    numbers: bitwise-stable.
(b) ``model-sampling.onnx``, the sampling graph: x (N, d) and one standard-noise input per stochastic parameter
    block, ``noise_<layer>_<block>``: (S, *shape), -> per-sample probabilities ``sample_probabilities``:
    (S, N, C), S free. A weight sample is ``mu + sigma * noise`` (a dropout mask ``noise >= p``), the very
    function the torch layers apply to their own draws, so fresh samples per request need only a random
    number generator beside the graph. Deterministic networks and ensembles have nothing to sample: form (a)
    only.
(c) ``model-local.onnx``, low-rank kinds only: local reparameterisation (``app.bnn.local``), x (N, d) and per
    row noise ``noise_<layer>_0`` (S, N, r) and ``noise_<layer>_1`` (S, N, m) -> ``sample_probabilities``
    (S, N, C). Per row it needs r + m normals a layer instead of a whole weight draw: what a seeded request
    on a few rows runs (``max_rows``, from the torch engine's cost model, as its ``auto`` sampler chooses).

Both go through ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript), on a CPU copy of the
checkpoint's network: the caller's model keeps its device, mode and parameters.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from app.bnn._base import LayerSample
from app.bnn.engine import MonteCarloEngine
from app.bnn.local import layer_moments, local_logits, noise_widths
from app.bnn.network import BayesianMLP, LayerKind
from app.bnn.predictive import Predictive, class_probabilities, decompose
from app.checkpoint.io import Checkpoint, sha256_bytes, write_manifest
from app.checkpoint.manifest import NoiseInput, OnnxInfo, OnnxLocal, OnnxSampling, TaskType
from app.checkpoint.noise import OUTPUTS, SAMPLING_OUTPUT, NoiseStream
from app.errors import CheckpointError, MissingExtra

ONNX_FILE = "model.onnx"
SAMPLING_FILE = "model-sampling.onnx"
LOCAL_FILE = "model-local.onnx"
DEFAULT_OPSET = 18  # the lowest opset the dynamo exporter implements (it converts down to older ones, lossy)
VALIDATION_SAMPLES = 32  # noise draws the sampling graph is validated on (S is a free axis of the graph)
TINY = 1e-30  # log(0) guard: p·log(max(p, TINY)) is 0 at p = 0, as xlogy is


class BankPredictive(nn.Module):
    """x: (N, d) -> (mean probs (N, C), total, aleatoric, mutual information, std (N,)) over a fixed bank."""

    def __init__(self, model: BayesianMLP, bank: list[LayerSample]) -> None:
        super().__init__()
        self.model = model
        self.kinds = [type(layer) for layer in bank]  # each layer's sample type, rebuilt around the constants
        self.flat = nn.ParameterList()  # constants of the graph; None entries (no mask) stay None
        self.present: list[list[bool]] = []
        for layer in bank:
            self.present.append([t is not None for t in layer])
            for t in layer:
                if t is not None:
                    self.flat.append(nn.Parameter(t.detach().clone(), requires_grad=False))

    def _bank(self) -> list[LayerSample]:
        out, k = [], 0
        for kind, present in zip(self.kinds, self.present, strict=True):
            fields = []
            for has in present:
                fields.append(self.flat[k] if has else None)
                k += has
            out.append(kind._make(fields))
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        probs = class_probabilities(self.model.propagate(x, self._bank()), self.model.spec.likelihood)  # (S, N, C)
        mean = probs.mean(0)
        total = -(mean * torch.log(mean.clamp_min(TINY))).sum(-1)
        aleatoric = -(probs * torch.log(probs.clamp_min(TINY))).sum(-1).mean(0)
        mutual_information = torch.relu(total - aleatoric)
        onehot = nn.functional.one_hot(mean.argmax(-1), mean.shape[-1]).to(probs.dtype)  # (N, C)
        chosen = (probs * onehot).sum(-1)  # (S, N)
        std = (chosen - chosen.mean(0)).square().mean(0).sqrt()
        return mean, total, aleatoric, mutual_information, std


class SamplingPredictive(nn.Module):
    """(x: (N, d), *noise: (S, *shape) each) -> per-sample probabilities (S, N, C).

    The noise tensors are the network's ``noise_specs`` flattened in layer order (layers without noise add
    none); ``sample_from_noise`` turns them into weight samples exactly as ``sample`` does.
    """

    def __init__(self, model: BayesianMLP) -> None:
        super().__init__()
        self.model = model
        self.counts = [len(specs) for specs in model.noise_specs()]

    def forward(self, x: Tensor, *noise: Tensor) -> Tensor:
        per_layer, k = [], 0
        for layer, count in zip(self.model.layers, self.counts, strict=True):
            per_layer.append(layer.noise_type._make(noise[k : k + count]))
            k += count
        weights = self.model.sample_from_noise(per_layer)
        return class_probabilities(self.model.propagate(x, weights), self.model.spec.likelihood)


class LocalPredictive(nn.Module):
    """(x: (N, d), *noise: (S, N, r) then (S, N, m) per layer) -> per-sample probabilities (S, N, C), by local
    reparameterisation through the factors' moments (``app.bnn.local``), as the torch engine's ``local``."""

    def __init__(self, model: BayesianMLP) -> None:
        super().__init__()
        self.model = model
        self.moments = nn.ParameterList(
            nn.Parameter(t.clone(), requires_grad=False) for layer in layer_moments(model) for t in layer
        )

    def forward(self, x: Tensor, *noise: Tensor) -> Tensor:
        moments = [tuple(self.moments[k : k + 6]) for k in range(0, len(self.moments), 6)]
        given = iter(noise)
        logits = local_logits(x, moments, noise[0].shape[0], lambda _: next(given), self.model)  # type: ignore[arg-type]
        return class_probabilities(logits, self.model.spec.likelihood)


def local_inputs(model: BayesianMLP) -> list[NoiseInput]:
    """The local graph's noise inputs in draw order, shapes per row and sample; empty unless low-rank."""
    if model.spec.kind is not LayerKind.LOWRANK or model.fixed_samples is not None:
        return []  # the engine refuses ``local`` for these too
    return [
        NoiseInput(name=f"noise_{layer}_{block}", shape=[width], distribution="normal")
        for layer, widths in enumerate(noise_widths(model))
        for block, width in enumerate(widths)
    ]


def noise_inputs(model: BayesianMLP) -> list[NoiseInput]:
    """The sampling graph's noise inputs, in draw order; empty for kinds with nothing to sample."""
    return [
        NoiseInput(name=f"noise_{layer}_{block}", shape=list(spec.shape), distribution=spec.distribution)
        for layer, specs in enumerate(model.noise_specs())
        for block, spec in enumerate(specs)
    ]


@dataclass(frozen=True)
class ExportReport:
    path: Path
    info: OnnxInfo


def reference_inputs(checkpoint: Checkpoint, rows: int = 64, seed: int = 0) -> np.ndarray:
    """Rows to validate on: the training medians plus standard-normal preprocessed rows (N, d) float32."""
    typical = checkpoint.manifest.preprocessing.typical_input()
    noise = np.random.default_rng(seed).standard_normal((rows - 1, typical.shape[1])).astype(np.float32)
    return np.concatenate([typical, noise])


@torch.no_grad()
def export_onnx(
    checkpoint: Checkpoint,
    samples: int | None = None,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Write ``model.onnx`` (bank of ``samples`` draws from ``seed``) into the checkpoint folder, validate it
    with onnxruntime against torch on reference inputs, and record it in the manifest. Raises
    CheckpointError when the two disagree by more than ``tolerance``.

    ``opset`` below :data:`DEFAULT_OPSET` is raised to it: the dynamo exporter writes 18 and up, and its
    conversion down fails on the bank graph (opset 17: an assertion in onnx's version converter). The manifest
    records the opset written. Exports a CPU copy of ``checkpoint.model``; the checkpoint's own network is
    left as it was."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtra("onnxruntime", "onnx", "the ONNX export") from exc
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter writes the graphs with it
    except ImportError as exc:
        if exc.name != "onnxscript":
            raise  # onnx itself missing: the command line names the extra
        raise MissingExtra("onnxscript", "onnx", "the ONNX export") from exc
    opset = max(opset, DEFAULT_OPSET)
    if checkpoint.manifest.text is not None:  # a Transformer: (ids, lengths) -> logits per sample and features
        from app.checkpoint.onnx_text import export_text_onnx

        return export_text_onnx(checkpoint, samples, seed, opset, tolerance, ort)
    if checkpoint.manifest.sequence is not None:  # an LSTM: its own graph (x, lengths) -> per-sample outputs
        from app.checkpoint.onnx_sequence import export_sequence_onnx

        return export_sequence_onnx(checkpoint, samples, seed, opset, tolerance)
    if checkpoint.manifest.task.type is TaskType.REGRESSION:  # its bank's head outputs: no class probabilities
        from app.checkpoint.onnx_regression import export_regression_onnx

        return export_regression_onnx(checkpoint, samples, seed, opset, tolerance, ort)
    model = copy.deepcopy(checkpoint.model).to("cpu").eval()
    samples = model.num_samples(samples or checkpoint.manifest.default_samples)
    bank = model.sample(samples, torch.Generator().manual_seed(seed))
    data = bank_graph(model, bank, opset)
    x = reference_inputs(checkpoint)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_out = session.run(OUTPUTS, {"x": x})
    predictive = Predictive(class_probabilities(model.propagate(torch.from_numpy(x), bank), model.spec.likelihood))
    u = decompose(predictive)
    torch_out = [predictive.mean, u.total, u.aleatoric, u.epistemic, u.std]
    worst = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(onnx_out, torch_out, strict=True))
    if not worst <= tolerance:
        raise CheckpointError(
            str(checkpoint.path / ONNX_FILE),
            f"onnxruntime and torch differ by {worst:.3g} > tolerance {tolerance:g}; not written",
        )
    sampling = _export_sampling(model, x, opset, tolerance, checkpoint.path / SAMPLING_FILE, ort)
    local = _export_local(model, x, opset, tolerance, checkpoint.path / LOCAL_FILE, ort)
    return write_bank_export(checkpoint, data, samples, seed, tolerance, worst, ort.__version__, sampling, local)


def write_bank_export(
    checkpoint: Checkpoint,
    data: bytes,
    samples: int,
    seed: int,
    tolerance: float,
    worst: float,
    onnxruntime_version: str,
    sampling: OnnxSampling | None = None,
    local: OnnxLocal | None = None,
) -> ExportReport:
    """Write a validated bank graph ``data`` (MLP or sequence), remove any stale sampling/local graph the
    export did not write, and record the ``onnx`` section in the manifest."""
    path = checkpoint.path / ONNX_FILE
    path.write_bytes(data)
    for graph, name in ((sampling, SAMPLING_FILE), (local, LOCAL_FILE)):
        if graph is None:
            (checkpoint.path / name).unlink(missing_ok=True)  # a stale graph of earlier weights
    info = OnnxInfo(
        file=ONNX_FILE,
        sha256=sha256_bytes(data),
        bytes=len(data),
        opset=_graph_opset(data),
        sampler="bank",
        samples=samples,
        bank_seed=seed,
        tolerance=tolerance,
        max_abs_diff=worst,
        onnxruntime_version=onnxruntime_version,
        sampling=sampling,
        local=local,
    )
    write_manifest(checkpoint.path, checkpoint.manifest.model_copy(update={"onnx": info}))
    return ExportReport(path=path, info=info)


def bank_graph(model: BayesianMLP, bank: list[LayerSample], opset: int = DEFAULT_OPSET) -> bytes:
    """The frozen-bank graph of ``model`` (on the CPU) over ``bank`` (a ``model.sample`` draw) as ONNX bytes
    (not validated): input ``x`` (N, d), outputs :data:`OUTPUTS`, N free."""
    return _to_onnx(
        BankPredictive(model, bank).eval(),
        (torch.zeros(2, model.spec.in_features),),  # 2 rows: torch.export would fix a size-1 axis
        ["x"],
        OUTPUTS,
        {"x": {0: torch.export.Dim("rows")}},
        opset,
    )


def sampling_graph(model: BayesianMLP, opset: int = DEFAULT_OPSET) -> bytes:
    """The sampling graph of ``model`` (on the CPU) as ONNX bytes (not validated): inputs ``x`` (N, d) and
    the :func:`noise_inputs` (S, *shape), output ``sample_probabilities`` (S, N, C), N and S free."""
    inputs = noise_inputs(model)
    rows, samples = torch.export.Dim("rows"), torch.export.Dim("samples")
    # 2 rows and 3 samples: distinct sizes above 1, so that torch.export keeps both axes free and apart.
    example = (torch.zeros(2, model.spec.in_features), *(torch.zeros(3, *i.shape) for i in inputs))
    return _to_onnx(
        SamplingPredictive(model).eval(),
        example,
        ["x", *(i.name for i in inputs)],
        [SAMPLING_OUTPUT],
        {"x": {0: rows}, "noise": tuple({0: samples} for _ in inputs)},
        opset,
    )


def local_graph(model: BayesianMLP, opset: int = DEFAULT_OPSET) -> bytes:
    """The local-reparameterisation graph of a low-rank ``model`` (on the CPU) as ONNX bytes (not validated):
    inputs ``x`` (N, d) and the :func:`local_inputs` (S, N, *shape), output ``sample_probabilities``
    (S, N, C), N and S free."""
    inputs = local_inputs(model)
    rows, samples = torch.export.Dim("rows"), torch.export.Dim("samples")
    example = (torch.zeros(2, model.spec.in_features), *(torch.zeros(3, 2, *i.shape) for i in inputs))
    return _to_onnx(
        LocalPredictive(model).eval(),
        example,
        ["x", *(i.name for i in inputs)],
        [SAMPLING_OUTPUT],
        {"x": {0: rows}, "noise": tuple({0: samples, 1: rows} for _ in inputs)},
        opset,
    )


def _to_onnx(
    module: nn.Module,
    example: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, object],
    opset: int,
) -> bytes:
    """``module`` through the dynamo exporter (torch.export, then onnxscript, then its optimiser) -> bytes."""
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def _graph_opset(data: bytes) -> int:
    """The default-domain opset a graph was written in (the exporter may raise a lower one it was asked)."""
    import onnx

    model = onnx.load_from_string(data)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _NotTorchvision(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Drop what the exporter says about itself rather than about our graph: that torchvision's ops are not
    registered (none is used), torch.export's own pytree FutureWarning, and that the noise inputs' shared S
    axis keeps one name. Every other warning passes."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    noise = _NotTorchvision()
    registry.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        registry.removeFilter(noise)


def _export_sampling(
    model: BayesianMLP, x: np.ndarray, opset: int, tolerance: float, path: Path, ort: object
) -> OnnxSampling | None:
    """Export, validate on the serving backend's noise (seed 0) and write the sampling graph; None for kinds
    without noise. Raises CheckpointError (and writes nothing) when onnxruntime and torch differ by more than
    ``tolerance``."""
    inputs = noise_inputs(model)
    if not inputs:
        return None
    data = sampling_graph(model, opset)
    noise = NoiseStream(inputs, seed=0).draw(VALIDATION_SAMPLES)
    worst = _validate_and_write(SamplingPredictive(model), data, x, noise, tolerance, path, "sampling graph", ort)
    return OnnxSampling(file=path.name, sha256=sha256_bytes(data), bytes=len(data), inputs=inputs, max_abs_diff=worst)


def _export_local(
    model: BayesianMLP, x: np.ndarray, opset: int, tolerance: float, path: Path, ort: object
) -> OnnxLocal | None:
    """Export, validate on the serving backend's noise (seed 0) and write the local graph; None unless the
    network runs ``local``. Raises CheckpointError (and writes nothing) when onnxruntime and torch differ by
    more than ``tolerance``."""
    inputs = local_inputs(model)
    if not inputs:
        return None
    data = local_graph(model, opset)
    noise = NoiseStream(inputs, seed=0, rows=x.shape[0]).draw(VALIDATION_SAMPLES)
    worst = _validate_and_write(LocalPredictive(model), data, x, noise, tolerance, path, "local graph", ort)
    max_rows = MonteCarloEngine(model, 0).local_max_rows()
    return OnnxLocal(
        file=path.name, sha256=sha256_bytes(data), bytes=len(data), inputs=inputs, max_rows=max_rows, max_abs_diff=worst
    )


def _validate_and_write(
    module: nn.Module,
    data: bytes,
    x: np.ndarray,
    noise: dict[str, np.ndarray],
    tolerance: float,
    path: Path,
    what: str,
    ort: object,
) -> float:
    """Run a graph that takes noise (``data``) and its torch ``module`` on the same rows and noise; write it to
    ``path`` and return the largest |difference| when within ``tolerance``, else raise CheckpointError."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    (onnx_probs,) = session.run([SAMPLING_OUTPUT], {"x": x, **noise})
    torch_probs = module(torch.from_numpy(x), *(torch.from_numpy(v) for v in noise.values()))
    worst = float(np.abs(onnx_probs - torch_probs.numpy()).max())
    if not worst <= tolerance:
        raise CheckpointError(
            str(path), f"{what}: onnxruntime and torch differ by {worst:.3g} > tolerance {tolerance:g}; not written"
        )
    path.write_bytes(data)
    return worst
