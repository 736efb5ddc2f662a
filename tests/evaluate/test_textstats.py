"""Length, label, n-gram and topic comparisons against hand-computed answers and clearly different real texts."""

from __future__ import annotations

import pytest

from dpsynth.evaluate import textstats


def test_words_keep_contractions_and_drop_punctuation() -> None:
    assert textstats.words("It's GREAT -- truly, 10/10!") == ["it's", "great", "truly", "10", "10"]


def test_length_comparison_known_values() -> None:
    real = ["a", "a b", "a b c"]
    syn = ["a b", "a b c", "a b c d"]
    out = textstats.length_comparison(real, syn, bins=10)
    assert out["real"]["mean"] == 2.0 and out["synthetic"]["mean"] == 3.0
    assert out["real"]["median"] == 2.0 and out["real"]["max"] == 3.0
    assert out["wasserstein_words"] == pytest.approx(1.0)  # every quantile shifted by one word
    hist = out["histogram"]
    assert sum(hist["real"]) == 3 and sum(hist["synthetic"]) == 3
    assert hist["edges"][0] == -0.5 and all(e % 1 == 0.5 for e in hist["edges"])  # whole-word bins
    assert hist["real"] == [0, 1, 1, 1, 0] and hist["synthetic"] == [0, 0, 1, 1, 1]  # bins for 0..4 words
    wide = textstats.length_comparison(["w " * 95] * 3, ["w"], bins=30)["histogram"]
    assert len(wide["real"]) <= 31 and wide["edges"][1] - wide["edges"][0] == 4


def test_label_comparison_tvd_and_missing_values() -> None:
    out = textstats.label_comparison(["a", "a", "b", "b"], ["a", "a", "a", "a"])
    assert out["tvd"] == pytest.approx(0.5)
    assert out["real"] == {"a": 0.5, "b": 0.5} and out["synthetic"] == {"a": 1.0, "b": 0.0}
    assert out["missing_in_synthetic"] == ["b"]
    same = textstats.label_comparison(["x", "y"], ["y", "x"])
    assert same["tvd"] == 0.0
    disjoint = textstats.label_comparison(["x"], ["y"])
    assert disjoint["tvd"] == 1.0


def test_top_ngrams_counts_and_stop_words() -> None:
    texts = ["the cat sat on the mat", "the cat ran", "a dog ran"]
    uni = dict(textstats.top_ngrams(texts, 1, k=10))
    assert uni["cat"] == 2 and uni["ran"] == 2 and "the" not in uni
    bi = dict(textstats.top_ngrams(texts, 2, k=10))
    assert bi["cat sat"] == 1 and bi["cat ran"] == 1  # stop words are removed before pairing
    assert textstats.top_ngrams(["a an the"], 2) == []


def test_ngram_overlap_same_vs_different_domains(reviews, headlines) -> None:
    rv = reviews["text"].tolist()
    same = textstats.ngram_comparison(rv[:800], rv[800:1600])
    other = textstats.ngram_comparison(rv[:800], headlines[:800])
    assert same["unigrams"]["jaccard"] > 0.3  # "film", "movie", "story"... dominate both halves
    assert other["unigrams"]["jaccard"] < 0.1
    assert textstats.ngram_comparison(rv[:300], rv[:300])["bigrams"]["jaccard"] == 1.0


def test_topics_identical_and_different(reviews, headlines) -> None:
    rv = reviews["text"].tolist()[:600]
    ident = textstats.topic_comparison(rv, rv, num_topics=6)
    assert ident["num_topics"] == 6 and ident["tvd"] == pytest.approx(0.0)
    assert all(len(t) == 8 for t in ident["topics"])
    other = textstats.topic_comparison(rv, headlines[:600], num_topics=6)
    assert other["tvd"] > ident["tvd"] + 0.2
    assert other["synthetic_no_topic"] > ident["synthetic_no_topic"]  # headlines miss the review vocabulary


def test_rare_real_ngrams_are_not_kept_for_display() -> None:
    real = ["secret phrase alpha"] + ["common words here"] * 3
    out = textstats.ngram_comparison(real, ["common words here"])
    shown = [g for g, _ in out["unigrams"]["real"]]
    assert "common" in shown and "secret" not in shown and "alpha" not in shown
    # the overlap still uses every top n-gram ("here" is a stop word): {common, words} / 5 words
    assert out["unigrams"]["jaccard"] == pytest.approx(2 / 5)
