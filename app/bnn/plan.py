"""A Monte Carlo plan: which sampler runs, how many weight samples, from which seed (no torch here).

A plan is decided once per request, by ``MonteCarloEngine.plan`` (torch) or a serving backend's ``plan``
(onnx), which refuse what they cannot run with ``PlanRefused``; running takes the plan as decided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.bnn.spec import Sampler


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
