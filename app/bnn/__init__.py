"""Singular (low-rank) Bayesian layers, baselines, networks and the predictive.

Dimensions: S samples, N rows, n in, m out, r rank, C classes.
"""

from app.bnn.fullrank import BayesLinear
from app.bnn.gaussian import MeanFieldGaussian
from app.bnn.init import InitSpec, Reference
from app.bnn.lowrank import LowRankBayesLinear
from app.bnn.network import (
    Activation,
    BayesianMLP,
    LayerKind,
    Likelihood,
    NetworkSpec,
    default_ranks,
    parameter_count,
)
from app.bnn.pointestimate import DeterministicLinear, EnsembleLinear, MCDropoutLinear
from app.bnn.predictive import (
    Predictive,
    RegressionSummary,
    Uncertainty,
    class_probabilities,
    decompose,
    entropy,
    predict,
    regression_summary,
)
from app.bnn.priors import GaussianPrior, PriorKind, PriorSpec, ScaleMixturePrior, kl_quadrature
from app.bnn.rank1 import Rank1BayesLinear

__all__ = [
    "Activation",
    "BayesLinear",
    "BayesianMLP",
    "DeterministicLinear",
    "EnsembleLinear",
    "GaussianPrior",
    "InitSpec",
    "LayerKind",
    "Likelihood",
    "LowRankBayesLinear",
    "MCDropoutLinear",
    "MeanFieldGaussian",
    "NetworkSpec",
    "Predictive",
    "PriorKind",
    "PriorSpec",
    "Rank1BayesLinear",
    "Reference",
    "RegressionSummary",
    "ScaleMixturePrior",
    "Uncertainty",
    "class_probabilities",
    "decompose",
    "default_ranks",
    "entropy",
    "kl_quadrature",
    "parameter_count",
    "predict",
    "regression_summary",
]
