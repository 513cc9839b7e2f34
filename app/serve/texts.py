"""The data plane's corridor for text models, between the decoded request and the Monte Carlo pass (numpy and the
checkpoint's tokenizer; no torch: the onnx backend serves text too).

A protocol decodes a request into its N texts (``None``, JSON's null or binary data's empty element, is the
empty text). From there, once, as training encoded its splits (``app.train.text_pipeline``): each text is a
string of at most the manifest's ``max_bytes`` UTF-8 bytes, the checkpoint's tokenizer reads it, a text of more
than ``max_tokens`` tokens is refused (both limits are 4xx errors naming the text's field, never an answer),
the gate screens every text (``app.gate.text``: no readable token is rejected, longer than every training text
or more out-of-vocabulary words than any is referred), and the scored texts' first ``max_length`` tokens go to
the network. The density's input, the pooled encoder state, comes back from the backend's pass
(``Scores.features``). No error names a text's content, only its field, size and token count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from app.checkpoint.manifest import Manifest
from app.errors import SchemaError
from app.gate.gate import Gate
from app.serve.backend import TextInputs
from app.serve.sequences import Prepared

if TYPE_CHECKING:  # imported with the tokenizer, which the repository loads for a text model only
    from app.data.tokenizer import TextEncoder

Locate = Callable[[str, int], str]  # (field, row) -> the text's field as the client named it


def typical_texts(rows: int, max_length: int) -> TextInputs:
    """``rows`` texts of ``max_length`` tokens ([CLS], then the first ordinary token): the longest input a model
    takes, so a rate measured on them bounds a request's."""
    from app.data.tokenizer import CLS_ID  # imports ``tokenizers``: a text model's backend has it loaded already

    ids = np.full((rows, max_length), CLS_ID + 1, dtype=np.int64)
    ids[:, 0] = CLS_ID
    return TextInputs(ids, np.full(rows, max_length, dtype=np.int64))


def _checked(texts: Sequence[Any], field: str, max_bytes: int, locate: Locate) -> list[str]:
    """Each text a string (None: the empty text) of at most ``max_bytes`` UTF-8 bytes; SchemaError otherwise."""
    out = []
    for row, text in enumerate(texts):
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise SchemaError(locate(field, row), f"must be a string, got {type(text).__name__}")
        # len() counts characters, each at least one byte: only a text near the limit is encoded to count its bytes.
        if len(text) > max_bytes // 4 and (size := len(text.encode("utf-8"))) > max_bytes:
            raise SchemaError(locate(field, row), f"{size} UTF-8 bytes exceed this model's limit of {max_bytes}")
        out.append(text)
    return out


def prepare_texts(
    manifest: Manifest,
    gate: Gate,
    encoder: TextEncoder,
    texts: Sequence[Any],
    locate: Locate,
    reject_request: bool,
) -> Prepared:
    """Check, tokenise, screen and cut N texts (see the module's docstring). SchemaError naming the text's field
    for a text over a limit and, with ``reject_request``, for the first the gate rejects."""
    schema = manifest.text
    assert schema is not None  # only text models come here
    encoded = encoder.encode(_checked(texts, schema.field, schema.max_bytes, locate))
    over = np.flatnonzero(encoded.tokens > schema.max_tokens)
    if over.size:
        row = int(over[0])
        reason = (
            f"{int(encoded.tokens[row])} tokens exceed this model's limit of {schema.max_tokens} "
            f"(it reads the first {schema.max_length})"
        )
        raise SchemaError(locate(schema.field, row), reason)
    screen = gate.screen(encoded)  # type: ignore[arg-type]  # a text model's gate screens encoded texts
    if reject_request and screen.rejected.any():
        row = int(np.flatnonzero(screen.rejected)[0])
        raise SchemaError(locate(schema.field, row), screen.details[row][0])
    scored = ~screen.rejected
    lengths = encoded.lengths[scored]
    width = int(lengths.max()) if lengths.size else 1  # the longest kept text: shorter batches run shorter
    return Prepared(screen, scored, TextInputs(encoded.ids[scored, :width], lengths), None)
