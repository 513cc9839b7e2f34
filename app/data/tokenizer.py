"""The text models' tokenizer: a WordPiece vocabulary trained on the training split with Hugging Face
``tokenizers``, kept as its JSON (no pickle) and applied identically in training and in every serving backend.

``TextEncoder.encode`` gives the network's input: token ids (N, L) right-padded with [PAD], position 0 the [CLS]
token, each text cut to its first ``max_length`` tokens, the valid lengths beside; and per text the
out-of-vocabulary rate the gate's support uses: the share of words the vocabulary does not hold whole (a word
split into word pieces, or [UNK]).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2  # the trainer gives the special tokens the first ids, in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    """A lower-casing WordPiece tokenizer (BERT's normaliser and pre-tokeniser: accents stripped, punctuation and
    CJK characters split off) with at most ``vocab_size`` tokens, [CLS] prepended to every text."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK, CLS], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, CLS_ID)])
    return tokenizer


@dataclass(frozen=True)
class EncodedTexts:
    """ids: (N, L) int64, L the longest kept text (≤ max_length); lengths: (N,) int64 ≥ 1 (CLS included);
    tokens: (N,) int64 tokens of the whole text before the cut (CLS included); words: (N,) int64 words the
    pre-tokeniser found (punctuation marks count as words); oov_rate: (N,) float64 in [0, 1]."""

    ids: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray
    words: np.ndarray
    oov_rate: np.ndarray


class TextEncoder:
    """Texts -> the network's token ids, from a tokenizer's JSON; ValueError when it is not one of
    :func:`train_tokenizer`'s (the checkpoint reader names the file).

    Args:
        tokenizer_json: ``Tokenizer.to_str()`` of a tokenizer from :func:`train_tokenizer`.
        max_length: tokens the network sees per text, [CLS] included.
    """

    def __init__(self, tokenizer_json: str, max_length: int) -> None:
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"the tokenizer's JSON cannot be read: {err}") from None
        if self.tokenizer.token_to_id(PAD) != PAD_ID or self.tokenizer.token_to_id(CLS) != CLS_ID:
            raise ValueError(f"the tokenizer must hold {PAD} as id {PAD_ID} and {CLS} as id {CLS_ID}")
        if self.tokenizer.token_to_id(UNK) != UNK_ID:
            raise ValueError(f"the tokenizer must hold {UNK} as id {UNK_ID}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and one token), got {max_length}")
        self.max_length = max_length
        self.json = tokenizer_json
        self.sha256 = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> EncodedTexts:
        """Token ids, lengths, whole-text token counts and OOV rates of ``texts`` (each non-empty)."""
        encodings = self.tokenizer.encode_batch(texts)
        tokens = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        lengths = np.minimum(tokens, self.max_length)
        ids = np.full((len(texts), int(lengths.max()) if len(texts) else 1), PAD_ID, dtype=np.int64)
        oov = np.zeros(len(texts), dtype=np.float64)
        words = np.zeros(len(texts), dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : lengths[i]] = e.ids[: lengths[i]]
            words[i], oov[i] = _words_and_oov_rate(e.ids, e.word_ids)
        return EncodedTexts(ids, lengths, tokens, words, oov)


def _words_and_oov_rate(ids: list[int], word_ids: list[int | None]) -> tuple[int, float]:
    """A text's words and the share of them that are [UNK] or more than one word piece (0 without words)."""
    pieces: dict[int, int] = {}
    unknown: set[int] = set()
    for token, word in zip(ids, word_ids, strict=True):
        if word is None:  # [CLS]
            continue
        pieces[word] = pieces.get(word, 0) + 1
        if token == UNK_ID:
            unknown.add(word)
    if not pieces:
        return 0, 0.0
    return len(pieces), sum(1 for w, n in pieces.items() if n > 1 or w in unknown) / len(pieces)
