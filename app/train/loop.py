"""The training loop: negative ELBO with KL annealing, Adam, early stopping on validation NLL.

Reads top to bottom; small helpers above it. No I/O: progress goes to an ``on_epoch`` callback.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.bnn.init import InitSpec
from app.bnn.network import BayesianMLP, LayerKind, Likelihood, NetworkSpec, default_ranks, svd_warm_start_
from app.bnn.predictive import predict
from app.bnn.priors import PriorSpec
from app.bnn.regression import GaussianPredictive, gaussian_nll
from app.bnn.spec import default_output_rank
from app.device import resolve_device
from app.train.config import ClassWeight, TrainConfig


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float  # mean per-row negative ELBO over the epoch's batches
    nll: float
    kl: float
    beta: float
    val_nll: float
    improved: bool


@dataclass
class TrainResult:
    model: nn.Module  # BayesianMLP, or BayesianLSTM from app.train.sequence_loop
    best_epoch: int
    best_val_nll: float
    epochs_run: int
    duration_seconds: float
    device: str
    history: list[EpochLog] = field(default_factory=list)


def build_spec(config: TrainConfig, in_features: int, classes: int | None) -> NetworkSpec:
    """The network spec for ``config`` on inputs of width ``in_features`` and ``classes`` classes (None: a
    regression on one target, a Gaussian head)."""
    if classes is None:
        likelihood, out_features = Likelihood.GAUSSIAN, 1
    else:
        likelihood = Likelihood.BERNOULLI if classes == 2 else Likelihood.CATEGORICAL
        out_features = 1 if classes == 2 else classes
    head = 2 * out_features if classes is None else out_features
    ranks = None
    if config.kind is LayerKind.LOWRANK:
        shapes = list(zip([in_features, *config.hidden], [*config.hidden, head], strict=True))
        ranks = config.ranks or default_ranks(shapes, config.rank, default_output_rank(likelihood))
    return NetworkSpec(
        in_features=in_features,
        hidden=list(config.hidden),
        out_features=out_features,
        kind=config.kind,
        ranks=ranks,
        activation=config.activation,
        likelihood=likelihood,
        prior=PriorSpec(kind=config.prior),
        init=InitSpec(reference=config.init_reference, damping=config.damping, eta=config.eta),
        dropout=config.dropout,
        members=config.members,
    )


VALIDATION_BLOCK_ROWS = 2048  # rows per pass of a regression's validation: (S, rows, width) stays small


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """β at ``epoch`` (1-based): linear warm-up from β/warmup to β, then constant."""
    if config.kl_warmup_epochs == 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.kl_warmup_epochs)


def class_weights(y: np.ndarray, classes: int, mode: ClassWeight) -> Tensor | None:
    """Per-class likelihood weights N / (C · N_c) when balanced (deaths get the larger weight)."""
    if mode is ClassWeight.NONE:
        return None
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"class counts {counts.tolist()}: every class needs training rows to be balanced")
    return torch.as_tensor(len(y) / (classes * counts), dtype=torch.float32)


def nll_loss(logits: Tensor, y: Tensor, likelihood: Likelihood, weights: Tensor | None) -> Tensor:
    """Mean over samples and rows of the (class-weighted) NLL: logits (S, B, k), y (B,) -> scalar."""
    samples = logits.shape[0]
    targets = y.expand(samples, -1).reshape(-1)  # (S·B,)
    if likelihood is Likelihood.BERNOULLI:
        flat = logits.reshape(-1)
        row_weight = None if weights is None else weights[targets]
        return F.binary_cross_entropy_with_logits(flat, targets.to(flat.dtype), weight=row_weight)
    flat = logits.reshape(-1, logits.shape[-1])  # (S·B, C)
    if weights is None:
        return F.cross_entropy(flat, targets)
    # Weighted mean over rows (not PyTorch's weight-normalised mean), matching the Bernoulli case.
    return (F.cross_entropy(flat, targets, reduction="none") * weights[targets]).mean()


def validation_nll(model: BayesianMLP, x: Tensor, y: Tensor, samples: int, seed: int) -> float:
    """NLL of the posterior predictive on (x, y), with a fixed seed so epochs compare fairly: of its mean class
    probability (classifiers) or its Gaussian mixture density (regression, y standardised floats)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if model.spec.likelihood is Likelihood.GAUSSIAN:
        weights = model.sample(model.num_samples(samples), generator)
        head = torch.cat([model.propagate(rows, weights) for rows in x.split(VALIDATION_BLOCK_ROWS)], dim=1)
        return float(-GaussianPredictive.from_head(head).log_prob(y[:, None]).mean())
    mean = predict(model, x, samples, generator).mean
    return float(-torch.log(mean.gather(1, y[:, None]).clamp_min(1e-12)).mean())


@dataclass(frozen=True)
class Objective:
    """What :func:`fit` optimises, independent of the architecture: ``batch_nll(index)`` the mean NLL of the
    training rows at ``index`` (one weight sample per step), ``validation_nll()`` the score that picks the
    epoch kept (lower is better), over ``rows`` training rows."""

    batch_nll: Callable[[Tensor], Tensor]
    validation_nll: Callable[[], float]
    rows: int


def fit(
    model: nn.Module,
    objective: Objective,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    on_epoch: Callable[[EpochLog], None] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Adam on the per-row negative ELBO (KL annealed by :func:`kl_weight`), early stopping on the validation
    NLL; ``model`` ends with its best epoch's weights, in eval mode. ``model`` needs ``kl(generator)`` and
    ``is_bayesian`` (every network of ``app.bnn`` has them); ``started``: the ``perf_counter`` the duration
    counts from (default: now)."""
    started = time.perf_counter() if started is None else started
    order = torch.Generator().manual_seed(config.seed + 1)  # batch order, on the CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rows = objective.rows
    best_nll, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    history: list[EpochLog] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        beta = kl_weight(config, epoch)
        totals = np.zeros(3)
        batches = torch.randperm(rows, generator=order).to(device).split(config.batch_size)
        for index in batches:
            nll = objective.batch_nll(index)
            kl = model.kl(generator) if model.is_bayesian else torch.zeros((), device=device)
            loss = nll + beta * kl / rows  # per-row negative ELBO, KL weighted by β
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += (loss.item(), nll.item(), kl.item())
        model.eval()
        with torch.no_grad():
            val_nll = objective.validation_nll()
        # Only epochs trained on the full objective (annealing done) can be the one kept.
        improved = val_nll < best_nll and epoch >= config.kl_warmup_epochs
        if improved:
            best_nll, best_epoch, best_state = val_nll, epoch, copy.deepcopy(model.state_dict())
        loss_mean, nll_mean, kl_mean = totals / len(batches)
        log = EpochLog(epoch, loss_mean, nll_mean, kl_mean, beta, val_nll, improved)
        history.append(log)
        if on_epoch is not None:
            on_epoch(log)
        if epoch - max(best_epoch, config.kl_warmup_epochs) >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_nll=best_nll,
        epochs_run=len(history),
        duration_seconds=time.perf_counter() - started,
        device=str(device),
        history=history,
    )


def training_targets(
    y_train: np.ndarray, y_val: np.ndarray, classes: int | None, config: TrainConfig, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(train targets, validation targets, class weights) on ``device``: int64 class ids and the weights
    ``config.class_weight`` asks for, or for ``classes`` None (a regression) finite float32 targets."""
    if classes is None:
        if config.class_weight is not ClassWeight.NONE:
            raise ValueError("class weights are for classifiers; a regression has no classes to weight")
        if not (np.isfinite(y_train).all() and np.isfinite(y_val).all()):
            raise ValueError("regression targets must be finite")
        as_float = {"dtype": torch.float32, "device": device}
        return torch.as_tensor(y_train, **as_float), torch.as_tensor(y_val, **as_float), None
    weights = class_weights(np.asarray(y_train), classes, config.class_weight)
    as_long = {"dtype": torch.long, "device": device}
    return (
        torch.as_tensor(y_train, **as_long),
        torch.as_tensor(y_val, **as_long),
        None if weights is None else weights.to(device),
    )


def head_nll(head: Tensor, y: Tensor, likelihood: Likelihood, weights: Tensor | None) -> Tensor:
    """The mean training NLL of head outputs (S, B, k) for targets y (B,): Gaussian for a regression, else
    :func:`nll_loss`."""
    if likelihood is Likelihood.GAUSSIAN:
        return gaussian_nll(head, y[:, None]).mean()
    return nll_loss(head, y, likelihood, weights)


def train(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: int | None,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    twin: BayesianMLP | None = None,
) -> TrainResult:
    """Fit a network of ``config.kind`` to (x_train, y_train); returns the best-validation-NLL weights.

    x: (N, d) float32 preprocessed inputs, y: (N,) int64 class ids, or for ``classes`` None (a regression)
    float standardised targets fitted by a Gaussian head. ``twin``: the trained deterministic
    network that ``config.warm_start`` names (loaded and checked by the caller, this loop does no I/O); its
    weights' SVD truncations initialise the factor means before the first step.
    """
    if (config.warm_start is None) != (twin is None):
        raise ValueError("pass the loaded twin exactly when config.warm_start is set (see train_checkpoint)")
    started = time.perf_counter()
    device = resolve_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # init and weight noise
    yt, yv, weights = training_targets(y_train, y_val, classes, config, device)
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    xv = torch.as_tensor(x_val, dtype=torch.float32, device=device)
    spec = build_spec(config, xt.shape[1], classes)
    model = BayesianMLP(spec, generator=generator, device=device)
    if twin is not None:
        svd_warm_start_(model, twin)
    samples = model.num_samples(1)  # one weight sample per step; every member for ensembles

    def batch_nll(index: Tensor) -> Tensor:
        return head_nll(model(xt[index], samples=samples, generator=generator), yt[index], spec.likelihood, weights)

    objective = Objective(
        batch_nll, lambda: validation_nll(model, xv, yv, config.val_samples, config.seed + 2), xt.shape[0]
    )
    return fit(model, objective, config, generator, device, on_epoch, started)
