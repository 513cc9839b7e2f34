"""The layered gate applied with numpy (app.gate.gate): screening, density, decisions, thresholds, tensors."""

from __future__ import annotations

import numpy as np
import pytest

from app.data.preprocess import Preprocessing
from app.data.schema import FeatureKind, FeatureSpec, PlausibleRange
from app.gate.gate import (
    Decision,
    Density,
    Gate,
    GateTensorError,
    GateTensors,
    PercentBelow,
    Screening,
    support_ranking,
    thresholds_for,
)
from app.gate.spec import (
    Component,
    DensityComponent,
    EpistemicComponent,
    GateCalibration,
    GateFile,
    GateRates,
    GateSpec,
    SupportComponent,
)

FEATURES = [
    FeatureSpec(
        name="age",
        kind=FeatureKind.NUMERIC,
        minimum=50,
        maximum=69,
        unit="years",
        plausible=PlausibleRange(low=0, high=120),
    ),
    FeatureSpec(
        name="creatinine",
        kind=FeatureKind.NUMERIC,
        minimum=0.4,
        maximum=8.6,
        missing_allowed=True,
        plausible=PlausibleRange(low=0, high=30),
    ),
    FeatureSpec(name="kappa", kind=FeatureKind.NUMERIC, minimum=0.1, maximum=10.0),  # no plausible bounds
    FeatureSpec(name="sex", kind=FeatureKind.CATEGORICAL, categories=["F", "M"]),
]
PREPROCESSING = Preprocessing.model_validate(
    {
        "numeric": [
            {"name": "age", "impute": 60, "mean": 60, "std": 5},
            {"name": "creatinine", "impute": 1.0, "mean": 1.1, "std": 0.3, "missing_indicator": True},
            {"name": "kappa", "impute": 1.2, "mean": 1.4, "std": 0.8},
        ],
        "categorical": [{"name": "sex", "categories": ["F", "M"]}],
    }
)
QUANTILES = np.linspace(0.0, 1.0, 101).tolist()


def _screen(**columns: list[object]):  # noqa: ANN202 - the Screen of raw columns
    base: dict[str, list[object]] = {"age": [60], "creatinine": [1.0], "kappa": [1.0], "sex": ["F"]}
    base.update(columns)
    rows = max(len(v) for v in base.values())
    base = {k: v * rows if len(v) == 1 else v for k, v in base.items()}
    return Screening(FEATURES, PREPROCESSING).screen(*PREPROCESSING.raw_values(base))


def _gate(density_threshold: float | None = 3.0, epistemic_threshold: float | None = 0.01) -> Gate:
    rates = GateRates(rows=10, not_accepted=0, rejected=0, support=0, density=0, epistemic=0)
    spec = GateSpec(
        target_fpr=0.02,
        support=SupportComponent(reference_quantiles=[0.0] * 101),
        density=DensityComponent(
            threshold=density_threshold,
            reference_quantiles=[5 * q for q in QUANTILES],
            shrinkage=0.1,
            dimension=PREPROCESSING.n_outputs,
        ),
        epistemic=EpistemicComponent(threshold=epistemic_threshold, reference_quantiles=[0.02 * q for q in QUANTILES]),
        calibration=GateCalibration(rows=10, reference_rows=4, level=1, samples=8, bank_seed=0),
        achieved={"val": rates},
        tensors=GateFile(sha256="0" * 64, bytes=1),
    )
    d = PREPROCESSING.n_outputs
    reference = {
        Component.DENSITY: np.array([1.0, 2.0, 3.0, 4.0]),
        Component.EPISTEMIC: np.array([0.0, 0.01, 0.02, 0.03]),
    }
    return Gate(spec, Screening(FEATURES, PREPROCESSING), GateTensors(Density(np.zeros(d), np.eye(d)), reference))


def test_a_value_outside_its_plausible_range_rejects_the_row_and_says_why() -> None:
    screen = _screen(age=[62, 10000, -50, 95], creatinine=[1.0, 1.0, 1.0, 88.4])
    assert screen.rejected.tolist() == [False, True, True, True]
    assert screen.reasons[1] == ["bounds:age"] and screen.reasons[3] == ["bounds:creatinine"]
    assert screen.details[1] == ["age = 10000 is outside the plausible range [0, 120] years"]
    assert screen.reasons[0] == []


def test_an_open_bound_rejects_nothing_on_that_side_and_a_missing_value_is_never_impossible() -> None:
    screen = _screen(kappa=[1e5, -1.0], creatinine=[None, None])
    assert not screen.rejected.any()  # kappa has no plausible range; a missing creatinine is imputed
    assert screen.reasons[0] == ["support:kappa"] and screen.support_score[0] == pytest.approx((1e5 - 10) / 0.8)


def test_a_value_too_far_to_score_is_rejected_even_without_plausible_bounds() -> None:
    screen = _screen(kappa=[2e38, 1e5])  # kappa has no plausible range; its training SD is 0.8
    assert screen.rejected.tolist() == [True, False]
    assert screen.reasons[0] == ["bounds:kappa"]
    assert "more than 1e+06 training standard deviations from the training mean" in screen.details[0][0]


def test_a_one_sided_training_range_is_explained_without_failing() -> None:
    features = [FEATURES[0].model_copy(update={"maximum": None}), *FEATURES[1:]]
    screen = Screening(features, PREPROCESSING).screen(
        *PREPROCESSING.raw_values({"age": [40.0], "creatinine": [1.0], "kappa": [1.0], "sex": ["F"]})
    )
    assert screen.details[0] == ["age = 40 is outside the training range [50, inf] years"]


@pytest.mark.parametrize(
    ("columns", "reason", "detail"),
    [
        ({"age": [95]}, "support:age", "age = 95 is outside the training range [50, 69] years"),
        ({"age": [None]}, "support:age", "age is missing, which it never was in training"),
        ({"sex": ["X"]}, "support:sex", "sex is a category unseen in training"),
    ],
)
def test_support_facts_refer_with_their_reason(columns: dict[str, list[object]], reason: str, detail: str) -> None:
    screen = _screen(**columns)
    assert screen.support_flag.tolist() == [True] and not screen.rejected.any()
    assert screen.reasons[0] == [reason] and screen.details[0][0].startswith(detail)


def test_support_score_is_the_distance_beyond_the_range_in_training_sds() -> None:
    screen = _screen(age=[50, 69, 45, 79], creatinine=[None, 1.0, 1.0, 1.0])  # creatinine may be missing
    assert screen.support_flag.tolist() == [False, False, True, True]
    np.testing.assert_allclose(screen.support_score, [0.0, 0.0, 1.0, 2.0])  # (50 − 45) / 5, (79 − 69) / 5
    np.testing.assert_allclose(support_ranking(screen), [0.0, 0.0, 2.0, 3.0])


def test_a_rejected_row_lists_its_bounds_only() -> None:
    screen = _screen(age=[10000], sex=["X"])
    assert screen.reasons == [["bounds:age"]]
    assert screen.support_flag.tolist() == [True]  # the support still judges it (for evaluation's rankings)


def test_density_is_the_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    precision = a @ a.T + np.eye(4)
    density = Density(np.ones(4), precision)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    expected = [np.sqrt((row - 1) @ precision @ (row - 1)) for row in x.astype(np.float64)]
    np.testing.assert_allclose(density(x), expected, rtol=1e-12)


def test_decide_rejects_then_refers_on_any_flag_then_accepts() -> None:
    gate = _gate()
    screen = _screen(age=[60, 60, 60, 95, 10000, 60])
    density = np.array([1.0, 3.0, 3.5, 1.0, np.nan, 1.0])
    epistemic = np.array([0.001, 0.01, 0.001, 0.001, np.nan, np.nan])
    result = gate.decide(screen, density, epistemic)
    assert result.decisions == [
        Decision.ACCEPT,
        Decision.ACCEPT,
        Decision.REFER,
        Decision.REFER,
        Decision.REJECT,
        Decision.REFER,
    ]
    # Thresholds are strict; a NaN score of a scored row is referred, never accepted.
    assert result.reasons == [[], [], ["density"], ["support:age"], ["bounds:age"], ["epistemic"]]
    assert result.flags[Component.DENSITY].tolist() == [False, False, True, False, False, False]
    assert np.isnan(result.percentiles[Component.DENSITY][4]) and np.isnan(result.scores[Component.SUPPORT][4])
    assert result.percentiles[Component.DENSITY][0] == pytest.approx(20.0)
    assert result.accepted.tolist() == [True, True, False, False, False, False]
    assert "density: Mahalanobis distance 3.5 is above the threshold 3" in result.details[2][0]


def test_percent_below_counts_strictly_lower_reference_scores() -> None:
    quantiles = np.array([0.0, 0.0, 0.0, 1.0, 2.0])  # percentiles 0, 25, 50, 75, 100: half the reference is 0
    scores = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.nan])
    np.testing.assert_allclose(PercentBelow(quantiles)(scores), [0.0, 0.0, 62.5, 75.0, 100.0, 100.0, np.nan])


def test_a_component_without_a_threshold_refers_nothing() -> None:
    gate = _gate(density_threshold=None, epistemic_threshold=None)
    result = gate.decide(_screen(age=[60]), np.array([1e9]), np.array([1.0]))
    assert result.decisions == [Decision.ACCEPT]


def test_ranking_puts_support_and_bounds_above_every_score() -> None:
    gate = _gate()
    screen = _screen(age=[60, 60, 60, 95, 10000])
    ranking = gate.ranking(screen, np.array([0.5, 2.5, 9.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.025, 0.0, 0.0]))
    np.testing.assert_allclose(ranking, [0.0, 0.5, 1.0, 2.0, 3.0])  # ranks 0, 2, 4 of 4 reference scores


def test_thresholds_match_the_ranks_they_cut() -> None:
    rng = np.random.default_rng(3)
    reference = {
        Component.DENSITY: np.sort(rng.gamma(2.0, size=300)),
        Component.EPISTEMIC: np.sort(np.round(rng.gamma(1.0, size=300), 1)),
    }  # with ties
    scores = {c: np.concatenate([r, rng.gamma(2.0, size=500)]) for c, r in reference.items()}
    for level in (0, 17, 150, 299, 400):
        thresholds = thresholds_for(level, reference)
        for component, values in scores.items():
            ranks = np.searchsorted(reference[component], values, side="left")
            expected = ranks > min(level, 299) if level < 300 else values > reference[component][-1]
            assert ((values > thresholds[component]) == expected).all(), (component, level)
    assert thresholds_for(None, reference) == {Component.DENSITY: None, Component.EPISTEMIC: None}


def test_tensors_round_trip_and_refuse_what_does_not_fit() -> None:
    tensors = _gate().tensors
    again = GateTensors.from_bytes(tensors.to_bytes(), PREPROCESSING.n_outputs, 4)
    np.testing.assert_array_equal(again.density.precision, tensors.density.precision)
    np.testing.assert_array_equal(again.reference[Component.EPISTEMIC], tensors.reference[Component.EPISTEMIC])
    with pytest.raises(GateTensorError, match="expected float64"):
        GateTensors.from_bytes(tensors.to_bytes(), PREPROCESSING.n_outputs + 1, 4)
    with pytest.raises(GateTensorError, match="sorted"):
        unsorted = GateTensors(tensors.density, {**tensors.reference, Component.DENSITY: np.array([4.0, 3, 2, 1])})
        GateTensors.from_bytes(unsorted.to_bytes(), PREPROCESSING.n_outputs, 4)
    with pytest.raises(GateTensorError, match="NaN"):
        broken = GateTensors(
            Density(np.full(PREPROCESSING.n_outputs, np.nan), tensors.density.precision), tensors.reference
        )
        GateTensors.from_bytes(broken.to_bytes(), PREPROCESSING.n_outputs, 4)
    with pytest.raises(GateTensorError, match="readable"):
        GateTensors.from_bytes(b"not safetensors", PREPROCESSING.n_outputs, 4)


def test_plausible_ranges_are_checked() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        PlausibleRange(low=5, high=1)
    with pytest.raises(ValueError, match="needs a low or a high"):
        PlausibleRange()
    with pytest.raises(ValueError, match="plausible range"):
        FeatureSpec(name="sex", kind=FeatureKind.CATEGORICAL, categories=["F"], plausible=PlausibleRange(low=0))
    assert str(PlausibleRange(low=0)) == "[0, inf]" and str(PlausibleRange(high=3)) == "[-inf, 3]"


def _percent_below_reference(q: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The definition, step by step: q[i - 1] < score <= q[i], linear within; 0 at or below q[0], 100 above."""
    last, step = q.size - 1, 100.0 / (q.size - 1)
    i = np.searchsorted(q, scores, side="left")
    lower, upper = np.maximum(i - 1, 0), np.minimum(i, last)
    width = q[upper] - q[lower]
    fraction = np.where(width > 0, (scores - q[lower]) / np.where(width > 0, width, 1.0), 1.0)
    percent = np.where(i == 0, 0.0, np.where(i > last, 100.0, step * (lower + fraction * (upper - lower))))
    return np.where(np.isnan(scores), np.nan, percent)


def test_percent_below_matches_its_definition_on_plateaus_edges_and_nan() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        q = np.sort(np.round(rng.exponential(1.0, 101), int(rng.integers(0, 3))))  # rounding makes plateaus
        if trial % 3 == 0:
            q[:30] = 0.0  # a support-like plateau of zeros
        scores = np.concatenate([rng.choice(q, 20), rng.uniform(q[0] - 1, q[-1] + 1, 50), [np.nan, np.inf, -np.inf]])
        np.testing.assert_allclose(PercentBelow(q)(scores), _percent_below_reference(q, scores), atol=1e-9)
