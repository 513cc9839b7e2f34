"""The layered gate for sequences, with numpy only (the server imports it; no torch, no pandas).

A sequence is screened step by step with the tabular :class:`Screening` (each step is a row of raw values) and
the steps' findings are reduced to one per sequence; its density input is a fixed-width summary of its
preprocessed steps (:func:`summarise_steps`), scored by the same Mahalanobis :class:`Density` as a table's rows.

The screen runs on every step the client sends, including steps older than the model's ``max_length`` that
:func:`app.data.sequence.pad_steps` will cut before the network runs: an impossible or unseen value anywhere in
the history a client sends is still a bad input (and usually a broken feed that the kept steps share), so the
gate says so rather than silently dropping it. The density, by contrast, sees only the kept steps, as the
network does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app.gate.gate import Screen, Screening
from app.gate.spec import Component

_BOUNDS = f"{Component.BOUNDS.value}:"


def summarise_steps(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The density component's input for sequences: x (N, T, d) right-padded preprocessed steps, lengths (N,)
    in [1, T] -> (N, 2d) float64, [mean over the valid steps, the last valid step].

    The mean catches a shifted regime (every step a little off), the last step a recent excursion (the state the
    network's head reads); padding is ignored whatever it holds. A ValueError for lengths outside [1, T].
    """
    x = np.asarray(x)
    lengths = np.asarray(lengths, dtype=np.int64)
    if x.ndim != 3 or lengths.shape != (x.shape[0],):
        raise ValueError(f"expected x (N, T, d) and lengths (N,), got {x.shape} and {lengths.shape}")
    rows, steps, width = x.shape
    if rows == 0:
        return np.zeros((0, 2 * width))
    if (lengths < 1).any() or (lengths > steps).any():
        raise ValueError(f"lengths must be in [1, {steps}]")
    valid = np.arange(steps)[None, :, None] < lengths[:, None, None]  # (N, T, 1)
    # np.where, not a product: padding that is not finite must not leak into the mean (inf · 0 is NaN).
    total = np.where(valid, x.astype(np.float64), 0.0).sum(1)
    mean = total / lengths[:, None]
    last = x[np.arange(rows), lengths - 1].astype(np.float64)
    return np.concatenate([mean, last], axis=1)


def sequence_starts(lengths: np.ndarray, steps: int) -> np.ndarray:
    """lengths (N,) -> (N,) int64 first step of each sequence in the long table of ``steps`` rows; a ValueError
    unless lengths is 1-D, each ≥ 1, summing to ``steps``."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
        raise ValueError("sequence lengths must be a 1-D array of integer counts")
    lengths = lengths.astype(np.int64)
    if (lengths < 1).any():
        raise ValueError("every sequence needs at least one step")
    if int(lengths.sum()) != steps:
        raise ValueError(f"sequence lengths sum to {int(lengths.sum())} but {steps} steps were given")
    return (np.cumsum(lengths) - lengths).astype(np.int64)  # empty for no sequences


def screen_sequences(
    screening: Screening,
    numeric: Mapping[str, np.ndarray],
    codes: Mapping[str, np.ndarray],
    lengths: np.ndarray,
) -> Screen:
    """Bounds and support of N sequences from the checked raw values of all their steps.

    numeric/codes: feature -> (ΣT,) as ``Preprocessing.raw_values`` gives them for the long table (sequence i's
    steps contiguous, in time order), lengths (N,) -> a :class:`Screen` of N rows: rejected if any step is,
    support flag if any step flags, support score the max over the steps; reasons the distinct reasons of the
    steps in first-seen order (a rejected sequence keeps its bounds reasons only, as a rejected row does), each
    with the first offending step's sentence, prefixed with where and how often: ``"step 3 of 24: TEMP = 95 is
    outside the training range [-19, 42] °C (24 of 24 steps)"``. Every step sent is screened, also those past
    the model's ``max_length`` (see the module's docstring). A ValueError on bad lengths.
    """
    columns = [*numeric.values(), *codes.values()]
    steps = len(columns[0]) if columns else 0
    starts = sequence_starts(lengths, steps)
    lengths = np.asarray(lengths, dtype=np.int64)
    if starts.size == 0:
        empty = np.zeros(0, dtype=bool)
        return Screen(empty, np.zeros(0), empty.copy(), [], [])
    step = screening.screen(numeric, codes)
    # One C pass per field over the sequence starts; the lengths are ≥ 1, so no segment is empty.
    rejected = np.logical_or.reduceat(step.rejected, starts)
    support_flag = np.logical_or.reduceat(step.support_flag, starts)
    support_score = np.maximum.reduceat(np.asarray(step.support_score, dtype=np.float64), starts)
    reasons: list[list[str]] = [[] for _ in range(starts.size)]
    details: list[list[str]] = [[] for _ in range(starts.size)]
    noted = step.rejected | step.support_flag  # the only steps with reasons
    for row in np.flatnonzero(rejected | support_flag):
        start, length = int(starts[row]), int(lengths[row])
        first: dict[str, tuple[int, str]] = {}  # reason -> (its first step, that step's sentence); keeps order
        counts: dict[str, int] = {}
        for offset in np.flatnonzero(noted[start : start + length]).tolist():
            for reason, detail in zip(step.reasons[start + offset], step.details[start + offset], strict=True):
                if rejected[row] and not reason.startswith(_BOUNDS):
                    continue  # a rejected sequence is explained by its bounds alone
                first.setdefault(reason, (offset, detail))
                counts[reason] = counts.get(reason, 0) + 1
        for reason, (offset, detail) in first.items():
            reasons[row].append(reason)
            details[row].append(f"step {offset + 1} of {length}: {detail} ({counts[reason]} of {length} steps)")
    return Screen(rejected, support_score, support_flag, reasons, details)
