"""Plain text statistics, real vs synthetic: lengths, label proportions, frequent n-grams and topics.

These are the sanity checks a reader understands without embeddings: are synthetic records as long as real
ones, are the labels in the same proportions, do the same words and topics come up? Only aggregates of the real
data are computed (counts, proportions, top n-grams over the whole real test set), never single real records.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance
from sklearn.decomposition import NMF
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, with inner apostrophes): the unit for lengths and n-grams."""
    return _WORD.findall(text.lower())


# ---------------------------------------------------------------- lengths
def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "q05": 0.0, "q25": 0.0, "median": 0.0, "q75": 0.0,
                "q95": 0.0, "max": 0.0}
    q = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "q05": float(q[0]),
            "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "q95": float(q[4]),
            "max": float(arr.max())}


def length_comparison(real_texts: Sequence[str], synthetic_texts: Sequence[str], bins: int = 30) -> dict[str, Any]:
    """Words per record: summaries, a shared-bin histogram for plotting, and the Wasserstein-1 distance in words."""
    real = [len(words(t)) for t in real_texts]
    syn = [len(words(t)) for t in synthetic_texts]
    top = int(np.ceil(max(np.quantile(real, 0.99) if real else 1, np.quantile(syn, 0.99) if syn else 1, 1)))
    # bins of a whole number of words, centred on integers: fractional widths make spiky, aliased histograms
    width = max(1, int(np.ceil((top + 1) / bins)))
    edges = np.arange(0, top + width + 1, width, dtype=float) - 0.5
    # values above the 99th percentile go into the last bin so one very long record does not flatten the plot
    h_real = np.histogram(np.clip(real, 0, edges[-1]), bins=edges)[0]
    h_syn = np.histogram(np.clip(syn, 0, edges[-1]), bins=edges)[0]
    return {
        "real": length_summary(real), "synthetic": length_summary(syn),
        "wasserstein_words": float(wasserstein_distance(real, syn)) if real and syn else None,
        "histogram": {"edges": edges.round(3).tolist(), "real": h_real.tolist(), "synthetic": h_syn.tolist()},
    }


# ---------------------------------------------------------------- labels
def label_comparison(real: Sequence[str], synthetic: Sequence[str]) -> dict[str, Any]:
    """Proportions of every label value in both sets (union of values) and their total variation distance."""
    c_real, c_syn = Counter(map(str, real)), Counter(map(str, synthetic))
    values = sorted(set(c_real) | set(c_syn), key=lambda v: (-c_real[v], v))
    n_real, n_syn = max(1, len(real)), max(1, len(synthetic))
    p = {v: c_real[v] / n_real for v in values}
    q = {v: c_syn[v] / n_syn for v in values}
    tvd = 0.5 * sum(abs(p[v] - q[v]) for v in values)
    return {"values": values, "real": p, "synthetic": q, "tvd": float(tvd),
            "missing_in_synthetic": [v for v in values if c_syn[v] == 0 and c_real[v] > 0]}


# ---------------------------------------------------------------- n-grams
def top_ngrams(texts: Sequence[str], n: int, k: int = 50, stop_words: str | None = "english") -> list[tuple[str, int]]:
    """The k most frequent word n-grams (English stop words removed, else every set shares 'the', 'of the')."""
    vec = CountVectorizer(ngram_range=(n, n), stop_words=stop_words, token_pattern=r"(?u)\b\w\w+\b",
                          lowercase=True)
    try:
        counts = vec.fit_transform(texts)
    except ValueError:  # no n-gram at all (very short texts)
        return []
    totals = np.asarray(counts.sum(axis=0)).ravel()
    names = vec.get_feature_names_out()
    order = np.lexsort((names, -totals))[:k]  # by count, ties alphabetically: deterministic
    return [(str(names[i]), int(totals[i])) for i in order]


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def ngram_comparison(real_texts: Sequence[str], synthetic_texts: Sequence[str], k: int = 50,
                     min_real_count: int = 3) -> dict[str, Any]:
    """Top-k unigrams and bigrams of each set and the Jaccard overlap of the two top-k lists.

    The lists kept for display hold the 20 most frequent; real n-grams only when they occur at least
    `min_real_count` times, so a phrase of one real record is never written out.
    """
    out: dict[str, Any] = {"k": k}
    for n, name in ((1, "unigrams"), (2, "bigrams")):
        real = top_ngrams(real_texts, n, k)
        syn = top_ngrams(synthetic_texts, n, k)
        out[name] = {"real": [(g, c) for g, c in real[:20] if c >= min_real_count], "synthetic": syn[:20],
                     "jaccard": jaccard([g for g, _ in real], [g for g, _ in syn])}
    return out


# ---------------------------------------------------------------- topics
def topic_comparison(real_texts: Sequence[str], synthetic_texts: Sequence[str], num_topics: int = 8,
                     seed: int = 0, top_words: int = 8) -> dict[str, Any]:
    """NMF topics fitted on the real texts; share of records whose dominant topic is each topic, real vs synthetic.

    Records with no vocabulary word at all have no topic; their share is reported separately.
    """

    vec = TfidfVectorizer(stop_words="english", max_df=0.95, min_df=2 if len(real_texts) >= 50 else 1,
                          max_features=5000, token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
    try:
        x_real = vec.fit_transform(real_texts)
    except ValueError:
        return {"num_topics": 0, "topics": [], "real": [], "synthetic": [], "tvd": None}
    k = int(max(1, min(num_topics, x_real.shape[1] - 1, len(real_texts) // 5)))
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=400)
    w_real = nmf.fit_transform(x_real)
    w_syn = nmf.transform(vec.transform(synthetic_texts))
    names = vec.get_feature_names_out()
    topics = [[str(names[i]) for i in np.argsort(-comp)[:top_words]] for comp in nmf.components_]

    def shares(w: np.ndarray) -> tuple[list[float], float]:
        has = w.sum(axis=1) > 0
        dom = np.bincount(w[has].argmax(axis=1), minlength=k) if has.any() else np.zeros(k)
        total = max(1, len(w))
        return (dom / total).tolist(), float(1 - has.mean()) if len(w) else 0.0

    p, p_none = shares(w_real)
    q, q_none = shares(w_syn)
    tvd = 0.5 * (float(np.abs(np.array(p) - np.array(q)).sum()) + abs(p_none - q_none))
    return {"num_topics": k, "topics": topics, "real": p, "synthetic": q, "real_no_topic": p_none,
            "synthetic_no_topic": q_none, "tvd": tvd}
