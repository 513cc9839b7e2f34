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

import torch

from app.bnn.plan import Plan
from app.bnn.sequence_engine import SequenceMonteCarloEngine
from app.bnn.transformer import BayesianTransformer
from app.checkpoint.manifest import Manifest
from app.evaluate.text_scoring import encoder_features
from app.serve.backend import AnyScores, ModelInput, Scores, TextInputs
from app.serve.backend_sequence import SequenceTorchBackend
from app.serve.texts import typical_texts


class TextTorchBackend(SequenceTorchBackend):
    def __init__(self, manifest: Manifest, engine: SequenceMonteCarloEngine, device: torch.device) -> None:
        super().__init__(manifest, engine, device)
        assert isinstance(engine.model, BayesianTransformer)  # only text manifests come here
        self.transformer = engine.model
        self.mean = engine.model.mean_sample()  # the features' one draw, kept for every request

    def typical_input(self, rows: int) -> ModelInput:
        return typical_texts(rows, self.max_length)

    def steps(self, inputs: ModelInput, plan: Plan) -> Generator[None, None, AnyScores]:
        """The sequence backend's pieces, then the features."""
        assert isinstance(inputs, TextInputs)  # the data plane tokenised the texts
        scores = yield from super().steps(inputs, plan)
        assert isinstance(scores, Scores)  # a text model is a classifier
        yield
        # The density's input as training computed it, under the posterior mean drawn once at load.
        return dataclasses.replace(scores, features=encoder_features(self.transformer, inputs, mean=self.mean))
