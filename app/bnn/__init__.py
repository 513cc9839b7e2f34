"""Singular (low-rank) Bayesian layers, baselines, networks and the predictive.

Dimensions: S samples, N rows, n in, m out, r rank, C classes. Names are imported on first use, so that
``app.bnn.spec`` (pydantic only) can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Activation": "app.bnn.spec",
    "BayesLinear": "app.bnn.fullrank",
    "BayesianLSTM": "app.bnn.recurrent",
    "BayesianMLP": "app.bnn.network",
    "DenseSample": "app.bnn._base",
    "DeterministicLinear": "app.bnn.pointestimate",
    "DropoutSample": "app.bnn._base",
    "EnsembleLinear": "app.bnn.pointestimate",
    "GaussianPredictive": "app.bnn.regression",
    "GaussianPrior": "app.bnn.priors",
    "InitSpec": "app.bnn.init",
    "LayerKind": "app.bnn.spec",
    "Likelihood": "app.bnn.spec",
    "LowRankBayesLinear": "app.bnn.lowrank",
    "LowRankSample": "app.bnn._base",
    "MCDropoutLinear": "app.bnn.pointestimate",
    "MeanFieldGaussian": "app.bnn.gaussian",
    "NetworkSpec": "app.bnn.spec",
    "Predictive": "app.bnn.predictive",
    "PriorKind": "app.bnn.spec",
    "PriorSpec": "app.bnn.spec",
    "Rank1BayesLinear": "app.bnn.rank1",
    "Rank1Sample": "app.bnn._base",
    "Reference": "app.bnn.init",
    "ScaleMixturePrior": "app.bnn.priors",
    "SequenceMonteCarloEngine": "app.bnn.sequence_engine",
    "SequenceNetworkSpec": "app.bnn.spec",
    "Uncertainty": "app.bnn.predictive",
    "class_probabilities": "app.bnn.predictive",
    "decompose": "app.bnn.predictive",
    "default_ranks": "app.bnn.spec",
    "entropy": "app.bnn.predictive",
    "kl_quadrature": "app.bnn.priors",
    "parameter_count": "app.bnn.network",
    "predict": "app.bnn.predictive",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
