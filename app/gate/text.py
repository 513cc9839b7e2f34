"""The layered gate for texts, with numpy only (the server imports it; no torch, no pandas).

- bounds: a text in which the tokenizer reads no token at all (only the [CLS] it adds) is **rejected**,
  reason ``bounds:text``; request limits (bytes, tokens) are 4xx errors before the gate.
- support: what the training texts never showed, from the tokenizer's output alone; **referred** whatever the
  scores: ``support:length``, more tokens than the longest training text (the network reads the first
  ``max_length``); ``support:vocabulary``, a text of at least ``min_words`` words whose out-of-vocabulary rate
  (words the vocabulary does not hold whole) exceeds every training text's of that many words.
- density: the Mahalanobis distance of the text's pooled encoder state (``BayesianTransformer.pooled_features``:
  the input of the last block under the posterior mean, averaged over the kept positions) from the training
  texts'. A mean of the token embeddings alone would rank long texts as more familiar than short ones
  (an average of more tokens lies nearer the centre).
- epistemic: the mutual information from the served bank, as for every classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.gate.gate import Screen
from app.gate.spec import Component

if TYPE_CHECKING:  # tokenizers comes with the train extra; the screen reads its output's arrays only
    from app.data.tokenizer import EncodedTexts

MIN_WORDS = 3  # a text of fewer words has too few to tell a rate (one rare word is 100% out of vocabulary)


class TextSupport(BaseModel):
    """The training texts' limits the support component refers beyond (the manifest's ``text.support``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    longest_tokens: int = Field(ge=1, description="Tokens of the longest training text, [CLS] included.")
    oov_rate: float = Field(ge=0.0, le=1.0, description="The largest OOV rate of a training text of min_words+.")
    min_words: int = Field(MIN_WORDS, ge=1)

    @classmethod
    def fit(cls, encoded: EncodedTexts, min_words: int = MIN_WORDS) -> TextSupport:
        """The limits of the training split's encoding."""
        counted = encoded.words >= min_words
        rate = float(encoded.oov_rate[counted].max()) if counted.any() else 1.0
        return cls(longest_tokens=int(encoded.tokens.max()), oov_rate=rate, min_words=min_words)


class TextScreening:
    """Bounds and support of tokenised texts: what can be judged before any network (see the module)."""

    def __init__(self, support: TextSupport) -> None:
        self.support = support

    def screen(self, encoded: EncodedTexts) -> Screen:
        """A :class:`Screen` of the N encoded texts. The support score (for percentiles and ranking) is the sum
        of the excesses over the two limits: the OOV rate's over its limit (texts of ``min_words``+), and the
        token count's as a fraction of the longest training text (0 inside both)."""
        limits = self.support
        rows = encoded.tokens.size
        rejected = encoded.tokens <= 1
        counted = encoded.words >= limits.min_words
        oov_excess = np.where(counted, np.maximum(encoded.oov_rate - limits.oov_rate, 0.0), 0.0)
        length_excess = np.maximum(encoded.tokens / limits.longest_tokens - 1.0, 0.0)
        too_long, unknown = length_excess > 0, oov_excess > 0
        reasons: list[list[str]] = [[] for _ in range(rows)]
        details: list[list[str]] = [[] for _ in range(rows)]
        for row in np.flatnonzero(rejected):
            reasons[row].append(f"{Component.BOUNDS.value}:text")
            details[row].append("text: the tokenizer reads no token in it (only whitespace or control characters)")
        support_flag = (too_long | unknown) & ~rejected
        for row in np.flatnonzero(support_flag):
            if too_long[row]:
                reasons[row].append(f"{Component.SUPPORT.value}:length")
                details[row].append(
                    f"text: {int(encoded.tokens[row])} tokens, more than the longest training text "
                    f"({limits.longest_tokens}); the model reads the first {int(encoded.lengths[row])}"
                )
            if unknown[row]:
                reasons[row].append(f"{Component.SUPPORT.value}:vocabulary")
                details[row].append(
                    f"text: {encoded.oov_rate[row]:.0%} of its {int(encoded.words[row])} words are not in the "
                    f"vocabulary whole, more than any training text of {limits.min_words}+ words "
                    f"({limits.oov_rate:.0%})"
                )
        support_score = np.where(rejected, 0.0, oov_excess + length_excess)
        return Screen(rejected, support_score, support_flag, reasons, details)
