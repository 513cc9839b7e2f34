"""Applying the layered gate to checked rows, with numpy only (both serving backends and evaluation use it).

``screen`` (bounds and support, on raw values) runs before the network, so rejected rows are never scored;
``density`` scores the preprocessed input; ``decide`` adds the epistemic score and explains every row.
See :mod:`app.gate.spec` for what each component means and how the thresholds were calibrated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from app.data.preprocess import MISSING_CODE, Preprocessing
from app.data.schema import FeatureKind, FeatureSpec, format_range
from app.gate.spec import SCORED, Component, GateSpec

# Beyond this many training standard deviations from the training mean a value cannot be scored: float32
# arithmetic through the network would overflow long before (a ReLU network's logits grow linearly). No
# plausible value is that far: a million SDs of creatinine is hundreds of kg per litre.
MAX_STANDARD_SCORE = 1e6


class Decision(str, Enum):
    ACCEPT = "accept"
    REFER = "refer"  # scored, but a human should look: the row is unlike the training data
    REJECT = "reject"  # not scored: a value is physically impossible


class GateTensorError(ValueError):
    """The gate's tensors do not fit its manifest section (shapes, order, values)."""


@dataclass(frozen=True)
class Density:
    """The input-density score: Mahalanobis distance from ``mean`` (d,) under ``precision`` (d, d)."""

    mean: np.ndarray
    precision: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, d) preprocessed rows -> (N,) distances."""
        centred = x.astype(np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0.0))


@dataclass(frozen=True)
class GateTensors:
    """The input density (its mean (d,) and precision (d, d)) and the sorted training-split scores of each
    scored component (``reference``: component -> (n,)), all float64."""

    density: Density
    reference: dict[Component, np.ndarray]

    def to_bytes(self) -> bytes:
        tensors = {"density.mean": self.density.mean, "density.precision": self.density.precision}
        tensors.update({f"reference.{c.value}": self.reference[c] for c in SCORED})
        return save_safetensors({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()})

    @classmethod
    def from_bytes(cls, data: bytes, dimension: int, reference_rows: int) -> GateTensors:
        """Parse verified bytes; GateTensorError unless every tensor has the manifest's shape and is sound."""
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise GateTensorError(f"not a readable safetensors file ({exc})") from exc
        expected = {"density.mean": (dimension,), "density.precision": (dimension, dimension)}
        expected.update({f"reference.{c.value}": (reference_rows,) for c in SCORED})
        if set(tensors) != set(expected):
            raise GateTensorError(f"tensors {sorted(tensors)} differ from the expected {sorted(expected)}")
        for name, shape in expected.items():
            value = tensors[name]
            if value.shape != shape or value.dtype != np.float64:
                found = f"{value.dtype}{list(value.shape)}"
                raise GateTensorError(f"tensor '{name}' is {found}, expected float64{list(shape)}")
            if not np.isfinite(value).all():
                raise GateTensorError(f"tensor '{name}' holds NaN or infinite values")
        reference = {c: tensors[f"reference.{c.value}"] for c in SCORED}
        if any((np.diff(r) < 0).any() for r in reference.values()):
            raise GateTensorError("reference scores must be sorted")
        return cls(Density(tensors["density.mean"], tensors["density.precision"]), reference)


@dataclass(frozen=True)
class Screen:
    """What the gate finds before the network runs, per row (N,): ``rejected`` (bounds), the support score
    and flag (whether or not the row is rejected), and each row's reasons and one sentence per reason so far
    (a rejected row's reasons are its bounds only)."""

    rejected: np.ndarray
    support_score: np.ndarray
    support_flag: np.ndarray
    reasons: list[list[str]]
    details: list[list[str]]


@dataclass(frozen=True)
class GateResult:
    """The gate's answer per row: decisions, reasons (``bounds:age``, ``support:age``, ``density``,
    ``epistemic``) with one sentence each, and every scored component's score, percentile (of the calibration
    split) and flag, (N,) each; NaN where not computed (a rejected row is not scored)."""

    decisions: list[Decision]
    reasons: list[list[str]]
    details: list[list[str]]
    scores: dict[Component, np.ndarray]
    percentiles: dict[Component, np.ndarray]
    flags: dict[Component, np.ndarray]

    @property
    def accepted(self) -> np.ndarray:
        return np.fromiter(map(Decision.ACCEPT.__eq__, self.decisions), dtype=bool, count=len(self.decisions))


def _unit(spec: FeatureSpec) -> str:
    return f" {spec.unit}" if spec.unit else ""


class Screening:
    """Bounds and support of a feature schema: what can be judged from raw values, before any network."""

    def __init__(self, features: list[FeatureSpec], preprocessing: Preprocessing) -> None:
        self.numeric = [f for f in features if f.kind is FeatureKind.NUMERIC]
        self.categorical = [f for f in features if f.kind is FeatureKind.CATEGORICAL]
        by_name = {t.name: t for t in preprocessing.numeric}
        inf = np.inf
        self._mean = np.array([by_name[f.name].mean for f in self.numeric], dtype=np.float64)

        def side(values: list[float | None], default: float) -> np.ndarray:
            return np.array([default if v is None else v for v in values], dtype=np.float64)

        self._low = side([f.plausible.low if f.plausible else None for f in self.numeric], -inf)
        self._high = side([f.plausible.high if f.plausible else None for f in self.numeric], inf)
        self._minimum = side([f.minimum for f in self.numeric], -inf)
        self._maximum = side([f.maximum for f in self.numeric], inf)
        self._std = np.array([by_name[f.name].std for f in self.numeric], dtype=np.float64)
        self._never_missing = np.array([not f.missing_allowed for f in self.numeric], dtype=bool)

    def screen(self, numeric: Mapping[str, np.ndarray], codes: Mapping[str, np.ndarray]) -> Screen:
        """Bounds and support on checked raw values (``Preprocessing.raw_values``): numeric (N,) float64 with
        NaN where missing, category codes (N,) negative for an unseen or (never in training) missing category."""
        rows = len(next(iter(numeric.values()))) if numeric else len(next(iter(codes.values())))
        reasons: list[list[str]] = [[] for _ in range(rows)]
        details: list[list[str]] = [[] for _ in range(rows)]
        if self.numeric:
            values = np.column_stack([numeric[f.name] for f in self.numeric])  # (N, k)
            missing = np.isnan(values)
            with np.errstate(invalid="ignore", over="ignore"):
                implausible = (values < self._low) | (values > self._high)  # NaN compares False: not impossible
                unscorable = np.abs(values - self._mean) / self._std > MAX_STANDARD_SCORE
                excess = np.maximum(self._minimum - values, values - self._maximum) / self._std
            excess = np.where(missing, 0.0, np.maximum(excess, 0.0))
            outside = (excess > 0) | (missing & self._never_missing)
            impossible = implausible | unscorable
        else:
            values = missing = implausible = impossible = outside = np.zeros((rows, 0), dtype=bool)
            excess = np.zeros((rows, 0))
        rejected = impossible.any(1)
        for row, col in zip(*np.nonzero(impossible), strict=True):
            spec = self.numeric[col]
            reasons[row].append(f"{Component.BOUNDS.value}:{spec.name}")
            if implausible[row, col]:
                details[row].append(
                    f"{spec.name} = {values[row, col]:g} is outside the plausible range {spec.plausible}{_unit(spec)}"
                )
            else:
                details[row].append(
                    f"{spec.name} = {values[row, col]:g} is more than {MAX_STANDARD_SCORE:g} "
                    "training standard deviations from the training mean: too far to score"
                )
        unseen = (
            np.column_stack([codes[f.name] < 0 for f in self.categorical])
            if self.categorical
            else np.zeros((rows, 0), dtype=bool)
        )
        support_flag = outside.any(1) | unseen.any(1)
        for row in np.flatnonzero(support_flag & ~rejected):  # a rejected row's reasons are its bounds
            for col in np.flatnonzero(outside[row]):
                spec = self.numeric[col]
                reasons[row].append(f"{Component.SUPPORT.value}:{spec.name}")
                if missing[row, col]:
                    details[row].append(
                        f"{spec.name} is missing, which it never was in training (imputed with the training median)"
                    )
                else:
                    details[row].append(
                        f"{spec.name} = {values[row, col]:g} is outside the training range "
                        f"{format_range(spec.minimum, spec.maximum)}{_unit(spec)}"
                    )
            for col in np.flatnonzero(unseen[row]):
                spec = self.categorical[col]
                reasons[row].append(f"{Component.SUPPORT.value}:{spec.name}")
                if codes[spec.name][row] == MISSING_CODE:
                    details[row].append(f"{spec.name} is missing, which it never was in training")
                else:
                    details[row].append(f"{spec.name} is a category unseen in training (known: {spec.categories})")
        support_score = excess.max(1) if excess.shape[1] else np.zeros(rows)
        return Screen(rejected, support_score, support_flag, reasons, details)


class Gate:
    """A model's gate: its manifest section, the screening of its feature schema, and its tensors."""

    def __init__(self, spec: GateSpec, screening: Screening, tensors: GateTensors) -> None:
        self.spec = spec
        self.tensors = tensors
        self.screening = screening
        self.screen = screening.screen
        self.density = tensors.density
        self._thresholds = spec.thresholds()
        self._percent_below = {
            Component.SUPPORT: PercentBelow(spec.support.reference_quantiles),
            Component.DENSITY: PercentBelow(spec.density.reference_quantiles),
            Component.EPISTEMIC: PercentBelow(spec.epistemic.reference_quantiles),
        }

    def flags(self, screen: Screen, density: np.ndarray, epistemic: np.ndarray) -> dict[Component, np.ndarray]:
        """What each component would refer on its own, (N,) bool each, whatever the other components say; a NaN
        score counts as above the threshold (never accepted)."""
        flags = {Component.SUPPORT: screen.support_flag}
        for component, score in ((Component.DENSITY, density), (Component.EPISTEMIC, epistemic)):
            threshold = self._thresholds[component]
            flags[component] = np.zeros(score.size, bool) if threshold is None else ~(score <= threshold)
        return flags

    def decide(self, screen: Screen, density: np.ndarray, epistemic: np.ndarray) -> GateResult:
        """The decision per row, from the screen and the scored components ((N,) each; NaN where a rejected
        row was not scored): reject on a bound, else refer on any flag, else accept."""
        scored = ~screen.rejected
        flags = {c: f & scored for c, f in self.flags(screen, density, epistemic).items()}
        scores = {
            Component.SUPPORT: np.where(scored, screen.support_score, np.nan),
            Component.DENSITY: np.where(scored, density, np.nan),
            Component.EPISTEMIC: np.where(scored, epistemic, np.nan),
        }
        percentiles = {c: self._percent_below[c](s) for c, s in scores.items()}
        reasons = [list(r) for r in screen.reasons]
        details = [list(d) for d in screen.details]
        regression = self.spec.epistemic.score == "epistemic_variance"
        for component, name, unit in (
            (Component.DENSITY, "Mahalanobis distance", ""),
            (Component.EPISTEMIC, *(("epistemic variance", "") if regression else ("mutual information", " nats"))),
        ):
            for row in np.flatnonzero(flags[component]):
                reasons[row].append(component.value)
                details[row].append(
                    f"{component.value}: {name} {scores[component][row]:.4g}{unit} is above the "
                    f"threshold {self._thresholds[component]:.4g}{unit} (percentile "
                    f"{percentiles[component][row]:.0f} of validation)"
                )
        referred = flags[Component.SUPPORT] | flags[Component.DENSITY] | flags[Component.EPISTEMIC]
        decisions = [
            Decision.REJECT if reject else Decision.REFER if refer else Decision.ACCEPT
            for reject, refer in zip(screen.rejected.tolist(), referred.tolist(), strict=True)
        ]
        return GateResult(decisions, reasons, details, scores, percentiles, flags)

    def ranking(self, screen: Screen, density: np.ndarray, epistemic: np.ndarray) -> np.ndarray:
        """The combined gate score, for ranking rows (as evaluation does): the largest rank of a row's scored
        components among the training reference as a fraction in [0, 1] (the calibrated level cuts it at
        level / n), 2 for a support fact, 3 for a rejected row. (N,)"""
        reference = self.tensors.reference
        n = next(iter(reference.values())).size
        ranks = reference_ranks(reference, np.nan_to_num(density, nan=np.inf), np.nan_to_num(epistemic, nan=np.inf))
        return np.where(screen.rejected, 3.0, np.where(screen.support_flag, 2.0, ranks / n))


def reference_ranks(
    reference: Mapping[Component, np.ndarray], density: np.ndarray, epistemic: np.ndarray
) -> np.ndarray:
    """Each row's largest rank among the sorted reference scores of the scored components (how many reference
    scores lie strictly below its score): the integer the calibrated level cuts. (N,) int."""
    return np.maximum(
        np.searchsorted(reference[Component.DENSITY], density, side="left"),
        np.searchsorted(reference[Component.EPISTEMIC], epistemic, side="left"),
    )


class PercentBelow:
    """Percent (0–100) of a reference scoring strictly below a score, approximated from the reference's evenly
    spaced quantiles (101: percentiles 0, 1, …, 100), linear between them; NaN stays NaN. A score on a plateau of
    tied quantiles (many zeros) gets the plateau's lower end: 0% of rows score below a support score of 0."""

    def __init__(self, quantiles: list[float] | np.ndarray) -> None:
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        step = 100.0 / (self.quantiles.size - 1)
        # np.interp (one C call, where the gate spends most of a one-row request otherwise) is right-continuous
        # at a repeated abscissa, this percentile left-continuous (a plateau's lower end): so interpolate the
        # mirror image, -score against the negated quantiles reversed. Below the first and above the last
        # quantile it clamps to 0 and 100; NaN stays NaN.
        self._x = -self.quantiles[::-1]
        self._y = -(step * np.arange(self.quantiles.size))[::-1]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return -np.interp(-np.asarray(scores, dtype=np.float64), self._x, self._y)


def support_ranking(screen: Screen) -> np.ndarray:
    """The support component as a score for ranking rows (N,): its excess in training SDs, plus 1 for any
    support fact (so a missing or unseen value ranks above every row inside the support)."""
    return screen.support_score + screen.support_flag


def thresholds_for(level: int | None, reference: Mapping[Component, np.ndarray]) -> dict[Component, float | None]:
    """Each scored component's threshold on its own score for a gate level: a row is referred when a score's
    rank among the reference (the count of reference scores below it) exceeds ``level``, i.e. when the score
    exceeds the reference's (level + 1)-th smallest; a level past the reference keeps its largest score."""
    if level is None:
        return {c: None for c in SCORED}
    return {c: float(r[min(level, r.size - 1)]) for c, r in reference.items()}
