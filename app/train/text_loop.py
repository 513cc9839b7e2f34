"""Training a Transformer text classifier: the same objective and epoch driver as the MLP and the LSTM
(:func:`app.train.loop.fit`), on token ids from the checkpoint's tokenizer. No I/O: progress goes to ``on_epoch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from app.bnn.init import InitSpec
from app.bnn.priors import PriorSpec
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import Likelihood, TextNetworkSpec
from app.bnn.transformer import BayesianTransformer
from app.device import resolve_device
from app.train.config import TrainConfig
from app.train.loop import EpochLog, Objective, TrainResult, fit, head_nll, training_targets
from app.train.sequence_loop import map_ranks, sequence_validation_nll

HEADS = 4  # the paper's text model has 4 heads (d_model 256); kept for every width that 4 divides
FEEDFORWARD_RATIO = 2  # d_ff / d_model: the paper's 512 / 256


def build_text_spec(config: TrainConfig, vocab_size: int, max_length: int, classes: int) -> TextNetworkSpec:
    """The encoder for ``config``: ``config.hidden`` = d_model per block (all equal, e.g. [64, 64]: two blocks
    of 64), d_ff = 2·d_model and 4 heads (the paper's proportions; fewer heads when 4 does not divide d_model).
    Low rank: ``config.ranks`` (one per map, see ``TextNetworkSpec``) or ``config.rank`` for every Bayesian
    map, each capped at min(m, n), and the head at full rank."""
    widths = set(config.hidden)
    if len(widths) != 1:
        raise ValueError(f"a Transformer's blocks share one width; got hidden {config.hidden} (e.g. 64,64)")
    d_model = config.hidden[0]
    heads = next(h for h in range(HEADS, 0, -1) if d_model % h == 0)
    common = {
        "vocab_size": vocab_size,
        "max_length": max_length,
        "d_model": d_model,
        "heads": heads,
        "layers": len(config.hidden),
        "d_ff": FEEDFORWARD_RATIO * d_model,
        "out_features": 1 if classes == 2 else classes,
        "kind": config.kind,
        "likelihood": Likelihood.BERNOULLI if classes == 2 else Likelihood.CATEGORICAL,
        "prior": PriorSpec(kind=config.prior),
        "init": InitSpec(reference=config.init_reference, damping=config.damping, eta=config.eta),
        "activation": config.activation,
        "dropout": config.dropout,
        "members": config.members,
    }
    return TextNetworkSpec(**common, ranks=map_ranks(config, TextNetworkSpec(**common).map_shapes()))


def train_text(
    ids_train: np.ndarray,
    lengths_train: np.ndarray,
    y_train: np.ndarray,
    ids_val: np.ndarray,
    lengths_val: np.ndarray,
    y_val: np.ndarray,
    vocab_size: int,
    max_length: int,
    classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fit a Bayesian Transformer of ``config.kind``; returns the best-validation-NLL weights.

    ids: (N, L) int64 token ids right-padded (position 0 the CLS token), lengths: (N,) int64 in [1, L],
    y: (N,) int64 class ids, ``classes`` ≥ 2; ``vocab_size`` and ``max_length`` (positions, CLS included) the
    tokenizer's.
    """
    if config.warm_start is not None:
        raise ValueError("the SVD warm start is for MLPs; a Transformer trains from its initialisation")
    started = time.perf_counter()
    device = resolve_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # init and weight noise
    yt, yv, weights = training_targets(y_train, y_val, classes, config, device)
    it = torch.as_tensor(ids_train, dtype=torch.long, device=device)
    lt = torch.as_tensor(lengths_train, dtype=torch.long, device=device)
    iv = torch.as_tensor(ids_val, dtype=torch.long, device=device)
    lv = torch.as_tensor(lengths_val, dtype=torch.long, device=device)
    spec = build_text_spec(config, vocab_size, max_length, classes)
    model = BayesianTransformer(spec, generator=generator, device=device)
    samples = model.num_samples(1)  # one weight sample per step; every member for ensembles

    def batch_nll(index: Tensor) -> Tensor:
        # A batch is cut to its longest text: padding beyond it changes nothing (masked) but costs time.
        longest = int(lt[index].max())
        head = model(it[index, :longest], lt[index], samples=samples, generator=generator)
        return head_nll(head, yt[index], spec.likelihood, weights)

    engine = SequenceMonteCarloEngine(model, bank_size=0)  # no bank: it would freeze the weights of epoch 0

    def validation() -> float:
        return sequence_validation_nll(engine, iv, lv, yv, config.val_samples, config.seed + 2)

    objective = Objective(batch_nll, validation, it.shape[0])
    return fit(model, objective, config, generator, device, on_epoch, started)
