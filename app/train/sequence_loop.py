"""Training a recurrent network: the same objective and epoch driver as the MLP (:func:`app.train.loop.fit`).

x: (N, T, d) padded steps with (N,) lengths. Classification targets are int64 class ids (the MLP's likelihoods
and class weights); regression targets are float64 and should be standardised by the caller (the checkpoint
stores the scale), so the Gaussian head starts on a unit scale. No I/O: progress goes to ``on_epoch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from app.bnn.init import InitSpec
from app.bnn.predictive import class_probabilities
from app.bnn.priors import PriorSpec
from app.bnn.recurrent import BayesianLSTM
from app.bnn.regression import GaussianPredictive
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import LayerKind, Likelihood, Sampler, SequenceNetworkSpec, map_ranks_with
from app.bnn.transformer import BayesianTransformer
from app.device import resolve_device
from app.train.config import TrainConfig
from app.train.loop import EpochLog, Objective, TrainResult, fit, head_nll, training_targets


def build_sequence_spec(config: TrainConfig, in_features: int, classes: int | None) -> SequenceNetworkSpec:
    """The LSTM for ``config``: ``config.hidden`` = one width per LSTM layer (all equal, e.g. [64, 64]: the
    paper's two layers of 64); ``classes`` None for a regression (a Gaussian head on one target). Low rank:
    ``config.ranks`` (one per map, see ``SequenceNetworkSpec``) or ``config.rank`` for every gate map, each
    capped at min(m, n), and the head at full rank (it is at most H × 2)."""
    widths = set(config.hidden)
    if len(widths) != 1:
        raise ValueError(f"an LSTM's layers share one width; got hidden {config.hidden} (e.g. 64,64)")
    hidden, layers = config.hidden[0], len(config.hidden)
    if classes is None:
        likelihood, out_features = Likelihood.GAUSSIAN, 1
    elif classes == 2:
        likelihood, out_features = Likelihood.BERNOULLI, 1
    else:
        likelihood, out_features = Likelihood.CATEGORICAL, classes
    common = {
        "in_features": in_features,
        "hidden": hidden,
        "layers": layers,
        "out_features": out_features,
        "kind": config.kind,
        "likelihood": likelihood,
        "prior": PriorSpec(kind=config.prior),
        "init": InitSpec(reference=config.init_reference, damping=config.damping, eta=config.eta),
        "dropout": config.dropout,
        "members": config.members,
    }
    return SequenceNetworkSpec(**common, ranks=map_ranks(config, SequenceNetworkSpec(**common).map_shapes()))


def map_ranks(config: TrainConfig, shapes: list[tuple[int, int]]) -> list[int] | None:
    """A low-rank network's rank per map: ``config.ranks``, or ``config.rank`` for every map but the head (each
    capped at min(m, n)) and the head at its full rank; None for the other kinds."""
    if config.kind is not LayerKind.LOWRANK:
        return None
    return config.ranks or map_ranks_with(shapes, config.rank)


def sequence_validation_nll(
    engine: SequenceMonteCarloEngine, x: Tensor, lengths: Tensor, y: Tensor, samples: int, seed: int
) -> float:
    """Mean NLL of the Monte Carlo predictive on (x, y) with the same ``seed`` every epoch, so epochs compare
    fairly: the mixture density for a regression, the mean class probability for a classifier."""
    head, _ = engine.run(x, lengths, samples, seed=seed, sampler=Sampler.FRESH)
    likelihood = engine.model.spec.likelihood
    if likelihood is Likelihood.GAUSSIAN:
        return float(-GaussianPredictive.from_head(head).log_prob(y[:, None]).mean())
    mean = class_probabilities(head, likelihood).mean(0)
    return float(-torch.log(mean.gather(1, y[:, None]).clamp_min(1e-12)).mean())


def train_sequence(
    x_train: np.ndarray,
    lengths_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    lengths_val: np.ndarray,
    y_val: np.ndarray,
    classes: int | None,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fit a Bayesian LSTM of ``config.kind``; returns the best-validation-NLL weights.

    x: (N, T, d) float32 right-padded steps, lengths: (N,) int64 in [1, T], y: (N,) int64 class ids
    (``classes`` ≥ 2) or float64 standardised targets (``classes`` None).
    """
    if config.warm_start is not None:
        raise ValueError("the SVD warm start is for MLPs; an LSTM trains from its initialisation")
    spec = build_sequence_spec(config, x_train.shape[2], classes)

    def build(generator: torch.Generator, device: torch.device) -> BayesianLSTM:
        return BayesianLSTM(spec, generator=generator, device=device)

    train, val = (x_train, lengths_train, y_train), (x_val, lengths_val, y_val)
    return fit_sequence_network(build, train, val, classes, config, torch.float32, False, on_epoch)


def fit_sequence_network(
    build: Callable[[torch.Generator, torch.device], BayesianLSTM | BayesianTransformer],
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: int | None,
    config: TrainConfig,
    dtype: torch.dtype,
    trim: bool,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """The objective and epoch driver of a network over padded sequences (an LSTM's steps, a Transformer's
    token ids): ``train`` and ``val`` are (inputs (N, T, ...) of ``dtype``, lengths (N,), targets (N,));
    ``build`` makes the network from the run's generator; ``trim`` cuts each batch to its longest sequence
    (padding beyond it changes nothing, masked, but costs time)."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # init and weight noise
    yt, yv, weights = training_targets(train[2], val[2], classes, config, device)
    xt, xv = (torch.as_tensor(part[0], dtype=dtype, device=device) for part in (train, val))
    lt, lv = (torch.as_tensor(part[1], dtype=torch.long, device=device) for part in (train, val))
    model = build(generator, device)
    samples = model.num_samples(1)  # one weight sample per step; every member for ensembles

    def batch_nll(index: Tensor) -> Tensor:
        x = xt[index, : int(lt[index].max())] if trim else xt[index]
        head = model(x, lt[index], samples=samples, generator=generator)
        return head_nll(head, yt[index], model.spec.likelihood, weights)

    engine = SequenceMonteCarloEngine(model, bank_size=0)  # no bank: it would freeze the weights of epoch 0

    def validation() -> float:
        return sequence_validation_nll(engine, xv, lv, yv, config.val_samples, config.seed + 2)

    objective = Objective(batch_nll, validation, xt.shape[0])
    return fit(model, objective, config, generator, device, on_epoch, started)
