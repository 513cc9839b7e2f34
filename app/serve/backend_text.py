"""The torch backend of text (Transformer) models: the sequence engine's ``bank`` and ``fresh`` samplers on token
ids, and the gate density's input computed in the same call.

A request's texts arrive tokenised (``TextInputs``: the data plane ran the checkpoint's tokenizer,
``app.serve.texts``); they run as sequences do (``SequenceTorchBackend``: blocks of rows through one weight
draw, a block per piece, every request on its own), and the answer carries ``features``, each text's pooled
encoder state under the posterior mean (``BayesianTransformer.pooled_features``), which training measured the
density on (``app.evaluate.text_scoring.encoder_features``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch

from app.bnn.plan import Plan
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.spec import Sampler
from app.bnn.transformer import BayesianTransformer
from app.checkpoint.manifest import Manifest
from app.serve.backend import AnyScores, Cost, ModelInput, Scores, TextInputs
from app.serve.backend_sequence import SequenceTorchBackend
from app.serve.texts import typical_texts

FEATURE_BLOCK = 256  # texts per pass of the features: one posterior-mean draw, so (block, L, d) activations


class TextTorchBackend(SequenceTorchBackend):
    def __init__(self, manifest: Manifest, engine: SequenceMonteCarloEngine, device: torch.device) -> None:
        super().__init__(manifest, engine, device)
        assert isinstance(engine.model, BayesianTransformer)  # only text manifests come here
        self.transformer = engine.model
        self.mean = engine.model.mean_sample()  # the features' one draw, kept for every request

    def typical_input(self, rows: int) -> ModelInput:
        return typical_texts(rows, self.max_length)

    def cost(self, plan: Plan, rows: int) -> Cost:
        """Measured seconds per text and sample; memory: one block's widest activations (S, block, L, width)
        in float32 (a few live at once; ``SequenceMonteCarloEngine.block_rows`` sizes the block), the head's
        outputs and, for fresh, the drawn weights."""
        spec = self.transformer.spec
        seconds = rows * plan.samples * self.seconds_per_row_sample.get(plan.sampler, 0.0)
        block = min(rows, self.engine.block_rows(plan.samples, self.max_length))
        width = max(spec.heads * self.max_length, spec.d_ff, 3 * spec.d_model)
        activations = plan.samples * block * self.max_length * width
        weights = plan.samples * self.manifest.parameter_count if plan.sampler is Sampler.FRESH else 0
        head = plan.samples * rows * spec.head_features
        return Cost(seconds, 4 * (3 * activations + weights + 4 * head))

    @torch.no_grad()
    def features(self, inputs: TextInputs) -> np.ndarray:
        """(N, d_model) float64: each text's pooled encoder state under the posterior mean."""
        ids = torch.from_numpy(np.ascontiguousarray(inputs.ids, dtype=np.int64)).to(self.device)
        lengths = torch.from_numpy(np.ascontiguousarray(inputs.lengths, dtype=np.int64)).to(self.device)
        out = np.empty((ids.shape[0], self.transformer.spec.d_model))
        for start in range(0, ids.shape[0], FEATURE_BLOCK):
            where = slice(start, start + FEATURE_BLOCK)
            out[where] = self.transformer.pooled_features(ids[where], lengths[where], self.mean).double().cpu().numpy()
        return out

    def steps(self, inputs: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """The sequence backend's pieces, then the features."""
        assert isinstance(inputs, TextInputs)  # the data plane tokenised the texts
        scores = yield from super().steps(inputs, plan)
        assert isinstance(scores, Scores)  # a text model is a classifier
        yield
        return dataclasses.replace(scores, features=self.features(inputs))
