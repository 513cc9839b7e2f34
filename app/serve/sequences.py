"""The data plane's corridor for sequence models, between the decoded request and the Monte Carlo pass (numpy
only: the server imports it without torch).

A protocol decodes a request into the long table of its N sequences' steps (feature -> ΣT raw values, each
sequence's steps contiguous and oldest first; padding already dropped) and their lengths (N,). From there:
the checkpoint's preprocessing checks every step's values once (an error names the step's field), the gate
screens every step sent, also those older than the model's ``max_length`` (``app.gate.sequence``), the kept
steps (the last ``max_length``) are encoded and right-padded, and the density reads their summary, as
training calibrated it (``app.train.sequence_pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.checkpoint.manifest import Manifest
from app.data.schema import FeatureError
from app.data.sequence import pad_steps
from app.errors import SchemaError
from app.gate.gate import Gate, Screen
from app.gate.sequence import screen_sequences, sequence_starts, summarise_steps
from app.serve.backend import ModelInput, SequenceInputs

LocateStep = Callable[[str, int, int], str]  # (feature, sequence, step) -> the field as the client named it


@dataclass(frozen=True)
class Prepared:
    """A request's rows (sequences, texts) ready to score: the gate's screen of all N, ``scored`` (N,) bool, the
    network's input of the scored ones and the density's input of the same ones (None: the backend's pass
    computes it, ``Scores.features``: a text model's)."""

    screen: Screen
    scored: np.ndarray
    inputs: ModelInput
    density_input: np.ndarray | None


def step_of(starts: np.ndarray, row: int) -> tuple[int, int]:
    """A step's index in the long table -> (its sequence, its step within the sequence)."""
    sequence = int(np.searchsorted(starts, row, side="right")) - 1
    return sequence, row - int(starts[sequence])


def prepare_sequences(
    manifest: Manifest,
    gate: Gate,
    columns: Mapping[str, Any],
    lengths: np.ndarray,
    locate_step: LocateStep,
    reject_request: bool,
) -> Prepared:
    """Check, screen, encode and pad N sequences (see the module's docstring). SchemaError naming the step's
    field for a value the preprocessing refuses, and, with ``reject_request``, for the first impossible one."""
    assert manifest.sequence is not None  # only sequence models come here
    preprocessing = manifest.preprocessing
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = sequence_starts(lengths, int(lengths.sum()))  # the decoders built ΣT steps from these lengths
    try:
        numeric, codes = preprocessing.raw_values(columns)
    except FeatureError as err:
        raise SchemaError(locate_step(err.feature, *step_of(starts, err.row)), err.reason) from None
    screen = screen_sequences(gate.screening, numeric, codes, lengths)
    if reject_request and screen.rejected.any():
        steps = gate.screen(numeric, codes)  # the step-level screen, to name the first impossible value's field
        row = int(np.flatnonzero(steps.rejected)[0])
        feature = steps.reasons[row][0].split(":", 1)[1]
        raise SchemaError(locate_step(feature, *step_of(starts, row)), steps.details[row][0])
    # Only the scored sequences' steps are encoded: a rejected step may hold a value too far out to encode.
    scored = ~screen.rejected
    keep = np.repeat(scored, lengths)
    encoded = preprocessing.encode({k: v[keep] for k, v in numeric.items()}, {k: v[keep] for k, v in codes.items()})
    x, kept = pad_steps(encoded, lengths[scored], manifest.sequence.max_length)  # the last max_length steps
    return Prepared(screen, scored, SequenceInputs(x, kept), summarise_steps(x, kept))
