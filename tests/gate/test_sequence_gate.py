"""The gate for sequences (app.gate.sequence): the density's step summary and the per-sequence screen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.data.preprocess import Preprocessing, infer_feature_specs
from app.data.schema import FeatureSpec, PlausibleRange
from app.gate.gate import Screen, Screening
from app.gate.sequence import screen_sequences, summarise_steps


def test_the_summary_is_the_mean_of_the_valid_steps_and_the_last_one() -> None:
    x = np.array(
        [
            [[1.0, 2.0], [3.0, 4.0], [99.0, np.inf]],  # length 2: the padding (not even finite) is ignored
            [[0.0, 0.0], [3.0, 3.0], [6.0, -3.0]],  # length 3
            [[5.0, 7.0], [0.0, 0.0], [0.0, 0.0]],  # length 1: mean and last are the one step
        ],
        dtype=np.float32,
    )
    summary = summarise_steps(x, np.array([2, 3, 1]))
    expected = [[2.0, 3.0, 3.0, 4.0], [3.0, 0.0, 6.0, -3.0], [5.0, 7.0, 5.0, 7.0]]
    np.testing.assert_array_equal(summary, expected)
    assert summary.dtype == np.float64
    assert summarise_steps(np.zeros((0, 3, 2)), np.zeros(0, np.int64)).shape == (0, 4)
    for lengths in ([0, 3, 1], [2, 4, 1]):
        with pytest.raises(ValueError, match="lengths must be in"):
            summarise_steps(x, np.array(lengths))


def _schema() -> tuple[list[FeatureSpec], Preprocessing]:
    """Training steps: TEMP in [-10, 30] °C (plausible [-60, 60]), PRES in [1000, 1030], wind NE/SW."""
    frame = pd.DataFrame(
        {
            "TEMP": np.linspace(-10.0, 30.0, 12),
            "PRES": np.linspace(1000.0, 1030.0, 12),
            "wind": ["NE", "SW"] * 6,
        }
    )
    specs = infer_feature_specs(frame, ["TEMP", "PRES", "wind"])
    plausible = PlausibleRange(low=-60, high=60)
    specs = [s.model_copy(update={"plausible": plausible, "unit": "°C"}) if s.name == "TEMP" else s for s in specs]
    return specs, Preprocessing.fit(frame, specs)


SPECS, PREPROCESSING = _schema()
SCREENING = Screening(SPECS, PREPROCESSING)

# Five sequences in long format: clean; TEMP beyond training at steps 2 and 4; an impossible TEMP (and an
# unseen wind and a PRES beyond training besides); an unseen wind; clean.
LENGTHS = np.array([3, 4, 2, 2, 1])
STEPS = pd.DataFrame(
    {
        "TEMP": [0.0, 5.0, 10.0] + [0.0, 35.0, 1.0, 40.0] + [100.0, 1.0] + [1.0, 2.0] + [3.0],
        "PRES": [1010.0] * 3 + [1010.0] * 4 + [1040.0, 1010.0] + [1010.0] * 2 + [1020.0],
        "wind": ["NE", "SW", "NE"] + ["NE"] * 4 + ["NE", "XX"] + ["SW", "NW"] + ["SW"],
    }
)


def _screen(lengths: np.ndarray = LENGTHS) -> Screen:
    return screen_sequences(SCREENING, *PREPROCESSING.raw_values(STEPS), lengths)


def test_each_sequence_is_judged_by_all_its_steps() -> None:
    screen = _screen()
    assert screen.rejected.tolist() == [False, False, True, False, False]
    assert screen.support_flag.tolist() == [False, True, True, True, False]
    assert screen.reasons == [[], ["support:TEMP"], ["bounds:TEMP"], ["support:wind"], []]
    assert screen.details[0] == [] and screen.details[4] == []
    # Flagged once, at its first offending step, with how many steps offend.
    assert screen.details[1] == ["step 2 of 4: TEMP = 35 is outside the training range [-10, 30] °C (2 of 4 steps)"]
    # A rejected sequence keeps only its bounds reasons, as a rejected row does.
    assert screen.details[2] == ["step 1 of 2: TEMP = 100 is outside the plausible range [-60, 60] °C (1 of 2 steps)"]
    assert screen.details[3] == [
        "step 2 of 2: wind is a category unseen in training (known: ['NE', 'SW']) (1 of 2 steps)"
    ]


def test_the_support_score_is_the_largest_over_the_steps() -> None:
    steps = SCREENING.screen(*PREPROCESSING.raw_values(STEPS))
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    expected = [steps.support_score[s : s + n].max() for s, n in zip(starts, LENGTHS, strict=True)]
    screen = _screen()
    np.testing.assert_array_equal(screen.support_score, expected)
    temp_std = PREPROCESSING.numeric[0].std
    assert screen.support_score[1] == pytest.approx((40.0 - 30.0) / temp_std)  # step 4, not step 2
    assert screen.support_score[0] == screen.support_score[4] == 0.0


def test_steps_with_several_reasons_keep_their_order() -> None:
    # One sequence: PRES beyond training at step 1, then TEMP and PRES at step 2, then an unseen wind.
    steps = pd.DataFrame({"TEMP": [0.0, 31.0, 0.0], "PRES": [990.0, 1031.0, 1000.0], "wind": ["NE", "NE", "NW"]})
    screen = screen_sequences(SCREENING, *PREPROCESSING.raw_values(steps), np.array([3]))
    assert screen.reasons == [["support:PRES", "support:TEMP", "support:wind"]]
    assert [d.split(":")[0] for d in screen.details[0]] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert screen.details[0][0].endswith("(2 of 3 steps)")


def test_bad_lengths_are_refused() -> None:
    numeric, codes = PREPROCESSING.raw_values(STEPS)
    for lengths, match in (
        (np.array([3, 4, 2, 2]), "sum to 11 but 12 steps"),
        (np.array([3, 4, 2, 3, 0]), "at least one step"),
        (np.array([[3, 4, 2, 2, 1]]), "1-D"),
        (np.array([3.0, 4.0, 2.0, 2.0, 1.0]), "integer"),
    ):
        with pytest.raises(ValueError, match=match):
            screen_sequences(SCREENING, numeric, codes, lengths)


def test_no_sequences_give_an_empty_screen() -> None:
    numeric, codes = PREPROCESSING.raw_values(STEPS.iloc[:0])
    screen = screen_sequences(SCREENING, numeric, codes, np.zeros(0, np.int64))
    assert screen.rejected.shape == screen.support_score.shape == screen.support_flag.shape == (0,)
    assert screen.reasons == [] and screen.details == []
