"""The exported graphs' interface from numpy only (the torch-free server reads it too): their output names,
and the standard noise a sampling graph is fed.

One seeded generator, ``NOISE_CHUNK`` samples at a time, every noise input per chunk in the manifest's order: the
first k samples of a seed are the same whatever the total asked, so an adaptive run's draws are a prefix of a
fixed-S run's. The export validates the graph on this very noise.
"""

from __future__ import annotations

import numpy as np

from app.checkpoint.manifest import NoiseInput

OUTPUTS = ["probabilities", "total_entropy", "aleatoric", "mutual_information", "predictive_std"]  # bank graph
SAMPLING_OUTPUT = "sample_probabilities"  # sampling and local graphs: per-sample probabilities (S, N, C)
HEAD_OUTPUT = "head_outputs"  # sequence and regression bank graphs: per-sample head outputs (S, N, k)
FEATURES_OUTPUT = "features"  # text bank graphs: the gate density's input (N, d_model)
NOISE_CHUNK = 64  # samples drawn per step


class NoiseStream:
    """Noise for the inputs of a sampling graph from ``numpy.random.default_rng(seed)``; with ``rows``, for the
    local graph, whose noise is per row: each input (samples, rows, *shape)."""

    def __init__(self, inputs: list[NoiseInput], seed: int, rows: int | None = None) -> None:
        self.inputs = inputs
        self.rng = np.random.default_rng(seed)
        self.rows = () if rows is None else (rows,)

    def next(self, samples: int) -> dict[str, np.ndarray]:
        """Noise for the next ``samples`` samples (one chunk): name -> (samples, [rows,] *shape) float32."""
        return {
            i.name: (
                self.rng.standard_normal((samples, *self.rows, *i.shape), dtype=np.float32)
                if i.distribution == "normal"
                else self.rng.random((samples, *self.rows, *i.shape), dtype=np.float32)
            )
            for i in self.inputs
        }

    def draw(self, samples: int) -> dict[str, np.ndarray]:
        """Noise for ``samples`` samples, drawn chunk by chunk and concatenated: name -> (samples, *shape)."""
        chunks = [self.next(min(NOISE_CHUNK, samples - start)) for start in range(0, samples, NOISE_CHUNK)]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
