"""Training a Transformer text classifier: the same objective and epoch driver as the MLP and the LSTM
(:func:`app.train.loop.fit`), on token ids from the checkpoint's tokenizer. No I/O: progress goes to ``on_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from app.bnn.init import InitSpec
from app.bnn.priors import PriorSpec
from app.bnn.spec import Likelihood, TextNetworkSpec
from app.bnn.transformer import BayesianTransformer
from app.train.config import TrainConfig
from app.train.loop import EpochLog, TrainResult
from app.train.sequence_loop import fit_sequence_network, map_ranks

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
    spec = build_text_spec(config, vocab_size, max_length, classes)

    def build(generator: torch.Generator, device: torch.device) -> BayesianTransformer:
        return BayesianTransformer(spec, generator=generator, device=device)

    train, val = (ids_train, lengths_train, y_train), (ids_val, lengths_val, y_val)
    return fit_sequence_network(build, train, val, classes, config, torch.long, True, on_epoch)
