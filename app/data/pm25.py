"""The bundled sequence data set: Beijing hourly PM2.5 forecast one hour ahead from the past 24 hours.

Source: the UCI "Beijing PM2.5 Data" file (US Embassy PM2.5 readings and Beijing Capital International Airport
weather, 43,824 hourly rows, 2010-01-01 00:00 to 2014-12-31 23:00), vendored gzipped as
``app/data/bundled/beijing_pm25.csv.gz`` (provenance and licence in ``app/data/bundled/PROVENANCE.md``); the
sha256 of the decompressed bytes is checked on every load and nothing downloads at run time.

Examples: a window of the 24 hours t-24..t-1 (one step per hour, in time order) and the target
``log1p(pm2.5)`` at hour t, in log(1 + µg/m³). The target hour itself is never a step (no leakage). Step features:
``pm25_log`` (log1p of the hour's PM2.5; 2,067 hours are missing, imputed by the preprocessing with a missing
indicator), DEWP, TEMP, PRES, Iws, Is, Ir, the wind direction ``cbwd`` (one-hot) and the hour of day as
``hour_sin``/``hour_cos``. There are deliberately no calendar features (month, day of year, year): the winter and
later-period OOD sets must be covariate shifts the model has to detect from the weather and pollution themselves,
not from a feature that spells out the season.

Windows are kept only where the target is observed. Candidate target hours are every second hour (the even hours
of the day, a stride of 2 hours): consecutive hourly windows share 23 of their 24 steps, so the stride halves the
set (about 20,800 windows in all, 24 steps each) while losing little information. The file is contiguous hourly,
which the loader checks, so every window has all 24 of its hours; the step-time is implicit (the window's
position), so ``time`` is None.

In-distribution population: target hours in March to November. Train: 2010-2012. Validation and test: 2013,
split by the parity of the target hour's ISO week (even weeks validation, odd weeks test), so both cover the
whole season, interleaved in time; the splits never share a target hour, and a window shares input hours with
the other split only when its target lies in the first 24 hours of a week. The split is deterministic by time;
``seed`` is recorded in the provenance for interface parity with :func:`app.data.flchain.load_flchain`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from importlib.resources import files

import numpy as np
import pandas as pd

from app.data.dataset import DataProvenance
from app.data.preprocess import described_specs
from app.data.schema import PlausibleRange
from app.data.sequence import SequenceDataset, SequenceSplit, sequence_row_counts
from app.errors import DataError

SOURCE = "bundled:beijing_pm25"
FILE_NAME = "beijing_pm25.csv.gz"
SHA256 = "4127f868775e31b3956522adc0ec75af8937dde6a3896e8beed3a376c6d27f1c"  # of the decompressed CSV
TARGET = "pm2.5"
TARGET_UNIT = "log(1 + µg/m³)"
WINDOW = 24  # steps (hours) per window: t-24 .. t-1
STRIDE = 2  # hours between consecutive candidate target hours
CATEGORICAL = ["cbwd"]
PM25_FEATURES: tuple[str, ...] = (
    "pm25_log",
    "DEWP",
    "TEMP",
    "PRES",
    "Iws",
    "Is",
    "Ir",
    "cbwd",
    "hour_sin",
    "hour_cos",
)
IN_DISTRIBUTION_MONTHS = (3, 4, 5, 6, 7, 8, 9, 10, 11)
WINTER_MONTHS = (12, 1, 2)
TRAIN_YEARS = (2010, 2011, 2012)
EVAL_YEAR = 2013  # validation (even ISO weeks) and test (odd ISO weeks)
LATER_YEAR = 2014
RAW_COLUMNS = ("No", "year", "month", "day", "hour", "pm2.5", "DEWP", "TEMP", "PRES", "cbwd", "Iws", "Is", "Ir")
POPULATION = (
    "Windows of the 24 hours before a target hour in March-November at the US Embassy in Beijing (every second "
    "hour with an observed PM2.5); train 2010-2012, validation/test 2013 by even/odd ISO week; the target is "
    "log(1 + PM2.5) at that hour."
)

# Physically possible values (the gate rejects a step outside them): air temperature and dew point as met at the
# surface anywhere on Earth (a dew point never exceeds about 35 °C), sea-level-reduced pressure from the deepest
# cyclone to the strongest anticyclone, and accumulations and concentrations that cannot be negative. PM2.5 and
# the cumulated wind speed / snow / rain hours have no upper bound (Beijing's readings reach about 1,000 µg/m³).
PLAUSIBLE: dict[str, PlausibleRange] = {
    "pm25_log": PlausibleRange(low=0),
    "DEWP": PlausibleRange(low=-60, high=40),
    "TEMP": PlausibleRange(low=-60, high=60),
    "PRES": PlausibleRange(low=850, high=1100),
    "Iws": PlausibleRange(low=0),
    "Is": PlausibleRange(low=0),
    "Ir": PlausibleRange(low=0),
    "hour_sin": PlausibleRange(low=-1, high=1),
    "hour_cos": PlausibleRange(low=-1, high=1),
}

# name -> (unit, description)
_FEATURE_INFO: dict[str, tuple[str | None, str]] = {
    "pm25_log": ("log(1 + µg/m³)", "log(1 + PM2.5) at the US Embassy in that hour (missing where not measured)"),
    "DEWP": ("°C", "Dew point at Beijing Capital International Airport"),
    "TEMP": ("°C", "Air temperature at Beijing Capital International Airport"),
    "PRES": ("hPa", "Air pressure at Beijing Capital International Airport"),
    "Iws": ("m/s", "Cumulated wind speed: summed over the consecutive hours with the same wind direction"),
    "Is": ("hours", "Cumulated hours of snow (consecutive hours snowing so far)"),
    "Ir": ("hours", "Cumulated hours of rain (consecutive hours raining so far)"),
    "cbwd": (None, "Combined wind direction: NE, NW, SE or cv (calm or variable)"),
    "hour_sin": (None, "sin(2π · hour of day / 24)"),
    "hour_cos": (None, "cos(2π · hour of day / 24)"),
}

OOD_REASONS: dict[str, str] = {
    "later-period": (
        "Target hours in March-November 2014: a year never seen in training or validation, the drift a model "
        "deployed a year later meets (emissions, weather). The season matches training, so the covariates move "
        "little and an epistemic score is expected to struggle to detect this shift."
    ),
    "winter": (
        "Target hours in December-February of any year: a season never seen in training (the heating season), "
        "much colder and drier (mean TEMP about -3 °C against 18 °C, dew point -15 °C against 7 °C) with more "
        "extreme PM2.5 episodes (13% of hours above 250 µg/m³ against 5%): a covariate shift the model must "
        "detect from the weather and pollution history, since no calendar feature tells it the month."
    ),
    "unit-error:TEMP": (
        "The in-distribution test split with TEMP given in °F (× 9/5 + 32) at every step, as from a sensor feed "
        "in the wrong unit: a unit mismatch real pipelines hit."
    ),
}


def _raw_bytes() -> bytes:
    """The decompressed bundled CSV."""
    resource = files("app.data") / "bundled" / FILE_NAME
    try:
        return gzip.decompress(resource.read_bytes())
    except (OSError, EOFError) as err:
        raise DataError(f"{FILE_NAME}: cannot read the bundled file: {err}") from err


def _check_sha(data: bytes) -> str:
    """The hex sha256 of ``data``; DataError unless it is the vendored file's."""
    sha = hashlib.sha256(data).hexdigest()
    if sha != SHA256:
        raise DataError(f"{FILE_NAME}: bundled data changed (sha256 {sha[:12]}… != expected {SHA256[:12]}…)")
    return sha


def _hours(raw: pd.DataFrame) -> pd.DatetimeIndex:
    """The rows' hours; DataError unless the file is contiguous hourly, in order."""
    absent = [c for c in RAW_COLUMNS if c not in raw.columns]
    if absent:
        raise DataError(f"{FILE_NAME}: columns {absent} missing")
    hours = pd.DatetimeIndex(pd.to_datetime(raw[["year", "month", "day", "hour"]]))
    steps = np.diff(hours.to_numpy().astype("datetime64[h]").astype(np.int64))  # in hours, whatever the resolution
    if steps.size and not (steps == 1).all():
        first = int(np.flatnonzero(steps != 1)[0])
        raise DataError(
            f"{FILE_NAME}: not contiguous hourly: row {first + 1} ({hours[first]}) is followed by {hours[first + 1]}"
        )
    return hours


def _step_frame(raw: pd.DataFrame, hours: pd.DatetimeIndex) -> pd.DataFrame:
    """One row per hour of the file, the step features of :data:`PM25_FEATURES`."""
    pm = raw["pm2.5"].to_numpy(dtype=np.float64, na_value=np.nan)
    if (pm[~np.isnan(pm)] < 0).any():
        raise DataError(f"{FILE_NAME}: negative PM2.5 readings")
    angle = 2.0 * np.pi * hours.hour.to_numpy() / 24.0
    frame = pd.DataFrame(
        {
            "pm25_log": np.log1p(pm),
            **{c: raw[c].to_numpy(dtype=np.float64) for c in ("DEWP", "TEMP", "PRES", "Iws", "Is", "Ir")},
            "cbwd": raw["cbwd"].astype(object).to_numpy(),
            "hour_sin": np.sin(angle),
            "hour_cos": np.cos(angle),
        }
    )
    return frame[list(PM25_FEATURES)]


def _windows(steps: pd.DataFrame, targets: np.ndarray, y: np.ndarray, ids: np.ndarray) -> SequenceSplit:
    """The windows ending before each target row (hours t-24..t-1, in time order), one frame row per step."""
    targets = np.asarray(targets, dtype=np.int64)
    rows = (targets[:, None] + np.arange(-WINDOW, 0, dtype=np.int64)[None, :]).ravel()
    return SequenceSplit(
        frame=steps.iloc[rows].reset_index(drop=True),
        lengths=np.full(targets.size, WINDOW, dtype=np.int64),
        y=y[targets].copy(),
        ids=ids[targets].copy(),
    )


def load_pm25(seed: int = 0) -> SequenceDataset:
    """Beijing PM2.5: 24-hour windows → log(1 + PM2.5) the next hour; train 2010-2012 and val/test 2013
    (March-November), plus the later-period, winter and unit-error:TEMP OOD sets. Deterministic: ``seed`` is
    only recorded."""
    data = _raw_bytes()
    sha = _check_sha(data)
    raw = pd.read_csv(io.BytesIO(data))
    hours = _hours(raw)
    steps = _step_frame(raw, hours)
    y_all = steps["pm25_log"].to_numpy(dtype=np.float64)
    ids_all = np.asarray(hours.strftime("%Y-%m-%dT%H:%M"), dtype=object)

    # Candidate target rows: every STRIDE-th hour with a full window before it and an observed target.
    candidate = np.arange(WINDOW, len(raw), dtype=np.int64)
    candidate = candidate[candidate % STRIDE == 0]  # row 0 is 00:00, so these are the even hours of the day
    observed = ~np.isnan(y_all[candidate])
    dropped = int((~observed).sum())
    targets = candidate[observed]

    year = hours.year.to_numpy()[targets]
    month = hours.month.to_numpy()[targets]
    week = hours.isocalendar().week.to_numpy(dtype=np.int64)[targets]
    season = np.isin(month, IN_DISTRIBUTION_MONTHS)
    evaluation = season & (year == EVAL_YEAR)
    masks = {
        "train": season & np.isin(year, TRAIN_YEARS),
        "val": evaluation & (week % 2 == 0),
        "test": evaluation & (week % 2 == 1),
        "later-period": season & (year == LATER_YEAR),
        "winter": np.isin(month, WINTER_MONTHS),
    }
    parts = {name: _windows(steps, targets[mask], y_all, ids_all) for name, mask in masks.items()}
    train, val, test = parts["train"], parts["val"], parts["test"]
    if min(len(train), len(val), len(test)) == 0:
        raise DataError(f"{FILE_NAME}: an empty train, validation or test split")

    fahrenheit = test.frame.copy()
    fahrenheit["TEMP"] = fahrenheit["TEMP"] * 9.0 / 5.0 + 32.0
    ood = {
        "later-period": parts["later-period"],
        "winter": parts["winter"],
        "unit-error:TEMP": SequenceSplit(
            frame=fahrenheit, lengths=test.lengths.copy(), y=test.y.copy(), ids=test.ids.copy()
        ),
    }

    features = list(PM25_FEATURES)
    specs = described_specs(train.frame, features, list(CATEGORICAL), _FEATURE_INFO, PLAUSIBLE)
    counts = np.array([len(train), len(val), len(test)], dtype=np.float64)
    realised = counts / counts.sum()
    fractions = (float(realised[0]), float(realised[1]), float(1.0 - realised[0] - realised[1]))
    provenance = DataProvenance(
        source=SOURCE,
        sha256=sha,
        target=TARGET,
        population=POPULATION,
        rows=sequence_row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,  # realised by the time rules, not drawn
        ood_sets=dict(OOD_REASONS),
        options={
            "file": FILE_NAME,
            "features": features,
            "categorical": list(CATEGORICAL),
            "window": WINDOW,
            "stride_hours": STRIDE,
            "in_distribution_months": list(IN_DISTRIBUTION_MONTHS),
            "winter_months": list(WINTER_MONTHS),
            "train_years": list(TRAIN_YEARS),
            "eval_year": EVAL_YEAR,
            "val_test_rule": "ISO week of the target hour: even -> val, odd -> test",
            "later_period_year": LATER_YEAR,
            "dropped_missing_target": dropped,  # candidate target hours without a PM2.5 reading
        },
    )
    return SequenceDataset(
        name="beijing_pm25",
        target=TARGET,
        labels=None,
        features=specs,
        max_length=WINDOW,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
        target_unit=TARGET_UNIT,
        time=None,
    )
