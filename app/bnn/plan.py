"""A Monte Carlo plan: which sampler runs, how many weight samples, from which seed (no torch here).

A plan is decided once per request, by ``MonteCarloEngine.plan`` (torch) or a serving backend's ``plan``
(onnx), which refuse what they cannot run with ``PlanRefused``; running takes the plan as decided.

Running goes piece by piece, so that a caller may stop a call or run others between its pieces, and so that
memory stays bounded whatever S and N: a piece is a slice of the samples through every row (about
``PIECE_ROW_SAMPLES`` rows × samples, ``LOCAL_PIECE_ROW_SAMPLES`` for local reparameterisation, whose noise per
row and sample costs about ten times more), then the summaries go a block of rows at a time. The pieces depend
only on (sampler, N, S), so a request replays bitwise whoever ran beside it.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import TypeVar

from app.bnn.spec import MonteCarloError, Sampler

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """One call's Monte Carlo pass.

    Attributes:
        sampler: ``bank``, ``fresh`` or ``local`` (never ``auto``: the choice is made).
        samples: S, the samples drawn; the cap when ``tolerance`` is set.
        seed: the seed that replays the call (the bank's for ``bank``); None until the caller supplies one
            with ``seeded`` (a request without a seed takes its batch's).
        tolerance: adaptive: stop once both Monte Carlo standard errors are at most this; None: exactly S.
    """

    sampler: Sampler
    samples: int
    seed: int | None = None
    tolerance: float | None = None

    def seeded(self, seed: int) -> Plan:
        """This plan with ``seed`` where it has none."""
        return self if self.seed is not None else replace(self, seed=seed)


class PlanRefused(ValueError):
    """A call asks for what its engine cannot run: ``option`` is ``sampler``, ``samples``, ``seed`` or
    ``tolerance``, and ``reason`` says why."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason


# Fresh weights (torch) and noise (onnx) are drawn this many samples at a time from the call's generator, so
# the first k samples of a seed are the same whatever S, and a draw shared by a batch is a lone call's draw.
DRAW_UNIT = 64
PIECE_ROW_SAMPLES = 1 << 16  # bank and fresh: about 10 ms of the bundled model on 2 CPU cores (measured)
LOCAL_PIECE_ROW_SAMPLES = 1 << 13  # local: about the same time
# A piece's activations: every path keeps its widest activation within about PIECE_FLOATS floats (the fused
# and generic paths chunk inside a piece), and at most PIECE_BUFFERS such buffers are alive at once.
PIECE_FLOATS = 1 << 22
PIECE_BUFFERS = 8


def bank_or_fresh(
    sampler: Sampler, samples: int, seed: int | None, bank_size: int, bank_seed: int, networks: str
) -> Plan:
    """The plan of an engine with a frozen bank (``bank_size`` draws from ``bank_seed``; 0: none) and fresh
    draws only: ``auto`` takes the bank when it can serve (no seed or the bank's, S within it), else fresh; the
    plan's seed replays the call. PlanRefused(option, reason) when the asked sampler cannot serve it (``networks``
    names the networks in the refusal of another sampler: "sequence networks")."""
    if sampler is Sampler.AUTO:
        fits = bank_size > 0 and samples <= bank_size and seed in (None, bank_seed)
        sampler = Sampler.BANK if fits else Sampler.FRESH
    if sampler is Sampler.BANK:
        if not bank_size:
            raise PlanRefused("sampler", "this model has no frozen bank")
        if samples > bank_size:
            raise PlanRefused("samples", f"the bank holds {bank_size} samples; {samples} asked")
        if seed not in (None, bank_seed):
            raise PlanRefused("seed", f"the bank was drawn with seed {bank_seed}; omit it or send that one")
        return Plan(Sampler.BANK, samples, bank_seed)
    if sampler is not Sampler.FRESH:
        raise PlanRefused("sampler", f"{networks} run 'bank' or 'fresh', not '{sampler.value}'")
    return Plan(Sampler.FRESH, samples, seed)


def piece_samples(sampler: Sampler, rows: int) -> int:
    """Samples per piece of a call on N = ``rows`` rows (whole draw units for bank and fresh)."""
    if sampler is Sampler.LOCAL:
        return max(1, LOCAL_PIECE_ROW_SAMPLES // rows)
    return max(1, PIECE_ROW_SAMPLES // (rows * DRAW_UNIT)) * DRAW_UNIT


def summary_rows(samples: int) -> int:
    """Rows per block of the summaries (entropies, standard deviations, Monte Carlo errors) over S samples."""
    return max(1, PIECE_ROW_SAMPLES // samples)


def peak_bytes(plan: Plan, rows: int, classes: int, widest: int) -> int:
    """Estimated peak memory of a call beyond the model's own, float32 throughout: the buffer of per-sample
    probabilities (S, N, C) the summaries need, one piece's activations, and one block of summaries'
    temporaries."""
    samples = plan.samples
    piece = min(PIECE_FLOATS, min(samples, piece_samples(plan.sampler, rows)) * rows * widest)
    block = min(rows, summary_rows(samples)) * samples * classes
    return 4 * (samples * rows * classes + PIECE_BUFFERS * piece + 4 * block)


def largest_error(errors: list[MonteCarloError]) -> MonteCarloError:
    """The largest of row blocks' Monte Carlo errors (the MI's is NaN in every block or none: it depends on S)."""
    mi = [e.mutual_information for e in errors]
    return MonteCarloError(max(e.probability for e in errors), math.nan if any(map(math.isnan, mi)) else max(mi))


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Run a stepped call (``MonteCarloEngine.steps``, a backend's ``steps``) through all its pieces."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
