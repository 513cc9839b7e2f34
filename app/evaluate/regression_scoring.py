"""A regression's served predictive in the target's own units, for any architecture.

The network predicts a standardised target (the checkpoint stores the training scale); every answer is mapped
back: y = z·std + mean, variances · std². The MLP's bank scorer for regressions lives here too; the sequence
scorer is :class:`app.evaluate.sequence_scoring.SequenceBankScorer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.bnn._base import place
from app.bnn.network import BayesianMLP
from app.bnn.regression import GaussianPredictive
from app.bnn.spec import INTERVAL_LEVELS, Likelihood


@dataclass(frozen=True)
class RegressionPredictions:
    """The predictive of N targets, in the target's units, float64: mean (N,); total, aleatoric and epistemic
    (N,) variances (total = aleatoric + epistemic; epistemic, the variance of the samples' means, is the gate's
    epistemic score for a regression); ``intervals``: level -> (low (N,), high (N,)), the mixture's central
    interval at each of ``INTERVAL_LEVELS``."""

    mean: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    intervals: dict[float, tuple[np.ndarray, np.ndarray]]
    # The S Gaussians themselves, in the target's unit (float64), when the scorer was asked to keep them (the
    # evaluation's metrics need every draw); over the rows scored, so :meth:`expand` leaves it as it is.
    mixture: GaussianPredictive | None = None

    @classmethod
    def empty(cls) -> RegressionPredictions:
        none = np.zeros(0)
        return cls(none, none, none, none, {q: (none, none) for q in INTERVAL_LEVELS})

    def expand(self, rows: np.ndarray) -> RegressionPredictions:
        """These predictions of the rows where ``rows`` (N,) is True, placed back among all N (NaN elsewhere)."""

        def place(values: np.ndarray) -> np.ndarray:
            out = np.full(rows.size, np.nan)
            out[rows] = values
            return out

        return RegressionPredictions(
            mean=place(self.mean),
            total=place(self.total),
            aleatoric=place(self.aleatoric),
            epistemic=place(self.epistemic),
            intervals={q: (place(low), place(high)) for q, (low, high) in self.intervals.items()},
            mixture=self.mixture,
        )


def in_target_units(
    predictive: GaussianPredictive, mean: float, std: float, keep_mixture: bool = False
) -> RegressionPredictions:
    """A one-target standardised predictive, means/variances (S, N, 1) -> its summary in the target's units
    (and, with ``keep_mixture``, the mixture itself mapped there too)."""

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t[:, 0].double().cpu().numpy()

    # Quantiles are equivariant under an increasing affine map, so the intervals transform like the mean.
    intervals = {}
    for level in INTERVAL_LEVELS:
        low, high = predictive.interval(level)
        intervals[level] = (numpy(low) * std + mean, numpy(high) * std + mean)
    aleatoric = numpy(predictive.aleatoric) * std**2
    epistemic = numpy(predictive.epistemic) * std**2
    return RegressionPredictions(
        mean=numpy(predictive.mean) * std + mean,
        total=aleatoric + epistemic,  # summed after scaling, so the identity holds exactly
        aleatoric=aleatoric,
        epistemic=epistemic,
        intervals=intervals,
        mixture=(
            GaussianPredictive(predictive.means.double() * std + mean, predictive.variances.double() * std**2)
            if keep_mixture
            else None
        ),
    )


def check_scale(mean: float, std: float) -> None:
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError("target_mean must be finite and target_std finite and positive")


class RegressionBankScorer:
    """The served predictive of a regression MLP: its frozen bank of ``samples`` draws from ``bank_seed``
    (``model.sample`` from a generator seeded with it, as the classifier's engine draws its bank), rows in
    blocks of ``block_rows``."""

    def __init__(
        self,
        model: BayesianMLP,
        samples: int,
        bank_seed: int = 0,
        *,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        block_rows: int = 4096,
        keep_mixture: bool = False,
    ) -> None:
        if model.spec.likelihood is not Likelihood.GAUSSIAN or model.spec.out_features != 1:
            raise ValueError("a regression scorer needs a gaussian network with one target")
        check_scale(target_mean, target_std)
        self.model = model
        self.samples = model.num_samples(samples)
        self.bank_seed = bank_seed
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.block_rows = block_rows
        self.keep_mixture = keep_mixture  # the S Gaussians too (RegressionPredictions.mixture), for evaluation
        self.regression = True
        device = next(model.parameters()).device
        with torch.no_grad():
            self._bank = model.sample(self.samples, torch.Generator(device=device).manual_seed(bank_seed))
        self.device = device

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> RegressionPredictions:
        """x: (N, d) float32 preprocessed rows -> their predictive in the target's units."""
        if x.shape[0] == 0:
            return RegressionPredictions.empty()
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        head: torch.Tensor | None = None
        for start in range(0, xt.shape[0], self.block_rows):
            head = place(head, self.model.propagate(xt[start : start + self.block_rows], self._bank), start, len(xt))
        assert head is not None  # x holds at least one row
        predictive = GaussianPredictive.from_head(head)
        return in_target_units(predictive, self.target_mean, self.target_std, self.keep_mixture)
