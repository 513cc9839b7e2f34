"""What `sbnn compare` trains: the contenders (variants), the runs of each seed and the rank ablation.

The data set and its split stay fixed (the split a bundled model was trained on); only the training seed
varies. A :class:`StudyPlan` expands into runs (:class:`RunSpec`), one per (variant, seed) and per ablation rank,
each with its full :class:`~app.train.config.TrainConfig` and its folder ``<out>/<label>-s<seed>/``; they are
trained by :mod:`app.study.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.bnn.spec import LayerKind
from app.train.config import TrainConfig

EVALUATION_SEED = 0  # every run is scored with the same weight-sample seed, as `sbnn evaluate` does
ABLATION_BASE = "lowrank"  # the variant whose rank the ablation varies


@dataclass(frozen=True)
class Variant:
    """One contender: a label, its TrainConfig overrides, and optionally the variant whose run of the same
    seed is its SVD warm-start twin (a deterministic network)."""

    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    warm_start_from: str | None = None
    description: str = ""


COMPARISON: tuple[Variant, ...] = (
    # The deterministic network comes first: lowrank-svd starts from its run of the same seed.
    Variant("deterministic", {"kind": LayerKind.DETERMINISTIC}, description="one point estimate"),
    Variant("lowrank", {"kind": LayerKind.LOWRANK}, description="singular BNN, rank 15 hidden, 1 at the output"),
    Variant(
        "lowrank-svd",
        {"kind": LayerKind.LOWRANK},
        warm_start_from="deterministic",
        description="singular BNN, factor means from the SVD of the deterministic run of the same seed",
    ),
    Variant("fullrank", {"kind": LayerKind.FULLRANK}, description="mean-field Bayes by Backprop"),
    Variant("ensemble", {"kind": LayerKind.ENSEMBLE, "members": 5}, description="deep ensemble of 5"),
    Variant("mcdropout", {"kind": LayerKind.MCDROPOUT}, description="MC dropout, p = 0.1 on hidden inputs"),
    Variant("rank1", {"kind": LayerKind.RANK1}, description="rank-1 multiplicative (Dusenberry et al.)"),
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: which variant, which seed, its full config and its folder."""

    label: str  # variant label, or "lowrank-r<r>" for an ablation run
    seed: int
    config: TrainConfig
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class AblationPoint:
    """A rank of the ablation at one seed, and the run that measures it (the lowrank run itself at its rank)."""

    rank: int
    seed: int
    run: RunSpec


@dataclass(frozen=True)
class StudyPlan:
    """What ``sbnn compare`` trains. Every run shares the TrainConfig defaults (the budget rules: epochs,
    patience, batch, learning rate, β and its warm-up) except what a variant overrides; ``shared`` adds
    overrides for every run (tiny plans in tests)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    ablation_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    variants: tuple[Variant, ...] = COMPARISON
    ablation_ranks: tuple[int, ...] = (1, 2, 4, 8, 15, 32, 64)
    every_seed_ranks: tuple[int, ...] = ()  # ablation ranks also run at every comparison seed
    epochs: int = 200
    hidden: tuple[int, ...] = (128, 128)
    samples: int = 512
    shared: Mapping[str, Any] = field(default_factory=dict)
    timing_repeats: int = 5
    bootstrap_resamples: int = 1000  # of each claim's paired bootstrap interval (app.study.claims)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a plan needs at least one seed")
        labels = [v.label for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant labels must be unique, got {labels}")
        for index, variant in enumerate(self.variants):
            if variant.warm_start_from is not None and variant.warm_start_from not in labels[:index]:
                raise ValueError(
                    f"variant '{variant.label}' warm-starts from '{variant.warm_start_from}', which must be an "
                    f"earlier variant of the plan ({labels[:index]})"
                )
        if self.ablation_ranks and self.ablation_seeds and ABLATION_BASE not in labels:
            raise ValueError(f"the rank ablation varies the '{ABLATION_BASE}' variant, which the plan lacks")
        if any(r < 1 for r in self.ablation_ranks):
            raise ValueError(f"ablation ranks must be ≥ 1, got {self.ablation_ranks}")
        if not set(self.every_seed_ranks) <= set(self.ablation_ranks):
            raise ValueError(f"every_seed_ranks {self.every_seed_ranks} must be ablation ranks {self.ablation_ranks}")
        if self.timing_repeats < 1:
            raise ValueError(f"timing_repeats must be ≥ 1, got {self.timing_repeats}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be ≥ 100, got {self.bootstrap_resamples}")
        for variant in self.variants:  # a config the budget rules refuse fails now, not after hours of training
            try:
                self.config(variant, self.seeds[0], Path("."))
            except ValidationError as exc:
                first = exc.errors()[0]
                field_name = ".".join(map(str, first["loc"]))
                raise ValueError(f"variant '{variant.label}': {field_name}: {first['msg']}") from None

    def variant(self, label: str) -> Variant:
        for variant in self.variants:
            if variant.label == label:
                return variant
        raise KeyError(f"no variant '{label}' in the plan")

    def config(self, variant: Variant, seed: int, out: Path, **extra: Any) -> TrainConfig:
        """The TrainConfig of ``variant`` at ``seed``; a warm start points at its twin's run folder."""
        values: dict[str, Any] = {
            "epochs": self.epochs,
            "hidden": list(self.hidden),
            "default_samples": self.samples,
            **self.shared,
            **variant.overrides,
            **extra,
            "seed": seed,
        }
        if variant.warm_start_from is not None:
            values["warm_start"] = str(out / f"{variant.warm_start_from}-s{seed}")
        return TrainConfig(**values)

    def comparison_runs(self, out: Path) -> list[RunSpec]:
        """Every variant at every seed, seed by seed (so a twin is trained before the run it seeds)."""
        return [
            RunSpec(v.label, seed, self.config(v, seed, out), out / f"{v.label}-s{seed}")
            for seed in self.seeds
            for v in self.variants
        ]

    def ablation_points(self, out: Path) -> list[AblationPoint]:
        """Every ablation rank at every ablation seed (an ``every_seed_ranks`` rank at every comparison seed as
        well); the base variant's own rank reuses its runs."""
        base = self.variant(ABLATION_BASE) if self.ablation_ranks and self.ablation_seeds else None
        points = []
        for rank in self.ablation_ranks:
            extra = self.seeds if rank in self.every_seed_ranks else ()
            for seed in dict.fromkeys((*self.ablation_seeds, *extra)):
                assert base is not None  # checked in __post_init__
                base_config = self.config(base, seed, out)
                if base_config.rank == rank and base_config.ranks is None:
                    run = RunSpec(base.label, seed, base_config, out / f"{base.label}-s{seed}")
                else:
                    config = self.config(base, seed, out, rank=rank)
                    run = RunSpec(f"{base.label}-r{rank}", seed, config, out / f"{base.label}-r{rank}-s{seed}")
                points.append(AblationPoint(rank, seed, run))
        return points

    def runs(self, out: Path, ablation: bool = True) -> list[RunSpec]:
        """The runs to train, each once, in training order: the comparison, then the ablation's own runs."""
        ordered = self.comparison_runs(out) + ([p.run for p in self.ablation_points(out)] if ablation else [])
        unique: dict[Path, RunSpec] = {}
        for run in ordered:
            unique.setdefault(run.folder, run)
        return list(unique.values())


def make_study_plan(
    seeds: int | None = None, epochs: int | None = None, ablation: bool = True, quick: bool = False
) -> StudyPlan:
    """The plan of ``sbnn compare``: the full comparison (5 seeds, 200 epochs, S = 512, every ablation rank at
    every seed, 1,000 bootstrap resamples per claim) or, ``quick``, a smoke test of the same pipeline (2 seeds,
    30 epochs, S = 128, ranks 1, 4, 15 and 64 at seed 0, 200 resamples), with ``seeds`` and ``epochs``
    overriding either."""
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    chosen = tuple(range(seeds if seeds is not None else (2 if quick else 5)))
    return StudyPlan(
        seeds=chosen,
        ablation_seeds=() if not ablation else (chosen[:1] if quick else chosen),
        ablation_ranks=() if not ablation else ((1, 4, 15, 64) if quick else StudyPlan.ablation_ranks),
        epochs=epochs if epochs is not None else (30 if quick else StudyPlan.epochs),
        samples=128 if quick else StudyPlan.samples,
        bootstrap_resamples=200 if quick else StudyPlan.bootstrap_resamples,
    )
