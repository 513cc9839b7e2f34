"""The text gate's screen from a tokenizer's output alone: its limits come from the training texts, a text
beyond them is referred with a reason and a sentence, one with nothing readable rejected."""

from __future__ import annotations

import numpy as np

from app.data.tokenizer import EncodedTexts
from app.gate.text import TextScreening, TextSupport


def encoded(tokens: list[int], words: list[int], oov: list[float], max_length: int = 8) -> EncodedTexts:
    tokens_a = np.array(tokens, dtype=np.int64)
    lengths = np.minimum(tokens_a, max_length)
    ids = np.zeros((len(tokens), int(lengths.max())), dtype=np.int64)
    return EncodedTexts(ids, lengths, tokens_a, np.array(words, dtype=np.int64), np.array(oov))


def test_the_limits_are_the_training_texts_own() -> None:
    """The longest training text, and the largest OOV rate among texts of min_words or more (a two-word text
    of one rare word does not set it)."""
    train = encoded([5, 12, 3], [4, 10, 2], [0.25, 0.1, 1.0])
    support = TextSupport.fit(train)
    assert support.longest_tokens == 12 and support.oov_rate == 0.25 and support.min_words == 3


def test_texts_beyond_the_limits_are_referred_and_empty_ones_rejected() -> None:
    screening = TextScreening(TextSupport(longest_tokens=10, oov_rate=0.3))
    screen = screening.screen(encoded([6, 15, 6, 1, 4], [5, 14, 5, 0, 2], [0.2, 0.1, 0.8, 0.0, 1.0]))
    assert screen.rejected.tolist() == [False, False, False, True, False]
    assert screen.support_flag.tolist() == [False, True, True, False, False]  # 2 words: too few for a rate
    assert screen.reasons == [[], ["support:length"], ["support:vocabulary"], ["bounds:text"], []]
    assert "15 tokens, more than the longest training text (10)" in screen.details[1][0]
    assert "80% of its 5 words" in screen.details[2][0]
    np.testing.assert_allclose(screen.support_score, [0.0, 0.5, 0.5, 0.0, 0.0])
