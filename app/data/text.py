"""Text data sets: each example is one short text (a review snippet) and a class label.

The texts stay raw strings here; the checkpoint's tokenizer (``app.data.tokenizer``) turns them into the
network's token ids, identically in training and in every serving backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.data.dataset import DataProvenance
from app.errors import DataError


@dataclass(frozen=True)
class TextSplit:
    """``texts``: (N,) str; ``y``: (N,) int64 class ids (-1 where unknown: an OOD set); ``ids``: (N,) str naming
    each text's source (a movie, a headline's date, a product) for tracing."""

    texts: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.y) == len(self.ids):
            raise DataError(f"{len(self.texts)} texts but {len(self.y)} labels and {len(self.ids)} ids")
        if any(not isinstance(t, str) or not t.strip() for t in self.texts):
            raise DataError("every text must be a non-empty string")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, index: np.ndarray) -> TextSplit:
        index = np.asarray(index, dtype=np.int64)
        return TextSplit(self.texts[index].copy(), self.y[index].copy(), self.ids[index].copy())


@dataclass(frozen=True)
class TextDataset:
    """Texts split into train/val/test (in-distribution) plus named OOD and stress sets; ``labels``: the class
    labels (index = class id)."""

    name: str
    target: str
    labels: list[str]
    train: TextSplit
    val: TextSplit
    test: TextSplit
    ood: dict[str, TextSplit]
    provenance: DataProvenance

    @property
    def is_regression(self) -> bool:
        return False


def text_split(texts: list[str], ids: list[str], y: np.ndarray | None = None) -> TextSplit:
    """A split from lists; ``y`` None: unlabelled (-1), as an OOD set."""
    labels = np.full(len(texts), -1, dtype=np.int64) if y is None else np.asarray(y, dtype=np.int64)
    return TextSplit(np.asarray(texts, dtype=object), labels, np.asarray(ids, dtype=object))


def with_typos(texts: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Each word of ≥ 4 letters, with probability ``rate``, gets one typo: two neighbouring letters swapped, one
    dropped or one doubled (chosen uniformly), as hurried typing gives. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split(" ")
        for i, word in enumerate(words):
            if len(word) < 4 or not word.isalpha() or rng.random() >= rate:
                continue
            j = int(rng.integers(1, len(word) - 1))
            edit = int(rng.integers(3))
            if edit == 0:
                words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
            elif edit == 1:
                words[i] = word[:j] + word[j + 1 :]
            else:
                words[i] = word[: j + 1] + word[j:]
        out.append(" ".join(words))
    return np.asarray(out, dtype=object)


def text_row_counts(train: TextSplit, val: TextSplit, test: TextSplit, ood: dict[str, TextSplit]) -> dict[str, int]:
    """The ``DataProvenance.rows`` mapping, in texts."""
    rows = {"train": len(train), "val": len(val), "test": len(test)}
    rows.update({f"ood:{name}": len(s) for name, s in ood.items()})
    return rows
