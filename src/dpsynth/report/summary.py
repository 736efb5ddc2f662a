"""The summary of an evaluation as (metric, value, what good looks like) rows, shared by the CLI table and the HTML,
and the guarantee in one line.

One list of explanations keeps the terminal and the report saying the same thing about each number.
"""

from __future__ import annotations

import math
from typing import Any

from dpsynth.report.privacy_text import fmt_eps, fmt_prob

EXPLAIN = {
    "privacy": ("Formal privacy guarantee of the synthetic data, from the run's privacy ledger.",
                "smaller ε is stronger; ε ≤ 4 is typical of published DP synthetic text"),
    "accuracy": ("Accuracy on real held-out records of a classifier trained only on synthetic records "
                 "(in brackets: the same classifier trained on real training records).",
                 "close to the real-trained number, well above the majority-class rate"),
    "macro_f1": ("Macro-averaged F1 of that classifier: every label value counts equally, so rare labels matter.",
                 "close to the real-trained number"),
    "precision": ("Share of synthetic records that fall inside the region covered by real records (embedding "
                  "space, k-NN balls): are synthetic records realistic?", "high (identical sets give 1.0)"),
    "recall": ("Share of real records that fall inside the region covered by synthetic records: is the variety "
               "of the real data covered?", "high (identical sets give 1.0)"),
    "f1": ("Harmonic mean of precision and recall (the reference recipe reports 0.48-0.52 at ε = 4 to ∞).",
           "high (identical sets give 1.0)"),
    "fid": ("Fréchet distance between Gaussian fits of real and synthetic sentence embeddings.",
            "low (identical sets give 0)"),
    "mauve": ("MAUVE: how hard the two sets are to tell apart after clustering their embeddings.",
              "high, up to 1 (indistinguishable)"),
    "length": ("Words per record, mean of real vs synthetic (Wasserstein distance in brackets).",
               "similar means; small distance"),
    "label_tvd": ("Total variation distance between real and synthetic label proportions.",
                  "near 0 (same proportions); 1 = disjoint"),
    "ngrams": ("Overlap (Jaccard) of the 50 most frequent words / word pairs of each set.",
               "high: the same vocabulary dominates"),
    "topics": ("Total variation distance between topic shares (NMF topics fitted on the real data).",
               "near 0"),
    "copying": ("Synthetic records sharing a run of consecutive words with a training record (verbatim copying).",
                "0"),
    "nearest": ("Share of synthetic records closer to a training record than to any held-out real record.",
                "about 50%; much higher means memorisation"),
    "mia": ("AUC of a loss-based membership-inference attack on the generator (training vs held-out records).",
            "about 0.5 (the attacker is guessing)"),
}


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def privacy_value(privacy: dict[str, Any] | None) -> str:
    if not privacy or privacy.get("status") == "unknown":
        return "unknown (no privacy.json)"
    if privacy.get("status") == "non_private":
        return "NONE (non-private run, ε = ∞)"
    delta = privacy.get("delta")
    d = f", δ = {fmt_prob(delta)}" if delta is not None else ""
    return f"ε = {fmt_eps(privacy.get('epsilon'))}{d} per {privacy.get('unit') or 'record'}"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, what good looks like) for every metric that was computed."""
    rows: list[tuple[str, str, str]] = [("Privacy", privacy_value(metrics.get("privacy")), EXPLAIN["privacy"][1])]
    for res in metrics.get("utility") or []:
        col, syn, real = res["label_column"], res["synthetic"], res.get("real")
        for key, name in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1")):
            value = _f(syn[key]) + (f" (real-trained {_f(real[key])})" if real else "")
            good = EXPLAIN[key][1]
            if key == "accuracy":
                good += f"; majority class {_f(syn['majority_accuracy'])}"
            rows.append((f"{name} · {col} ({res['classifier']})", value, good))  # no [..]: rich markup
    fid = metrics.get("fidelity")
    if fid:
        rows.append((f"Precision / recall / F1 (k={fid.get('k')})",
                     f"{_f(fid.get('precision'))} / {_f(fid.get('recall'))} / {_f(fid.get('f1'))}",
                     EXPLAIN["f1"][1]))
        rows.append(("FID (embeddings)", _f(fid.get("fid"), 4), EXPLAIN["fid"][1]))
        rows.append(("MAUVE", _f(fid.get("mauve")), EXPLAIN["mauve"][1]))
    lengths = metrics.get("lengths")
    if lengths:
        rows.append(("Words per record (real vs synthetic)",
                     f"{lengths['real']['mean']:.1f} vs {lengths['synthetic']['mean']:.1f} "
                     f"(W1 {_f(lengths.get('wasserstein_words'), 2)})", EXPLAIN["length"][1]))
    for col, comp in (metrics.get("labels") or {}).items():
        rows.append((f"Label distance · {col} (TVD)", _f(comp["tvd"]), EXPLAIN["label_tvd"][1]))
    ngrams = metrics.get("ngrams")
    if ngrams:
        rows.append((f"Top-{ngrams['k']} word / word-pair overlap",
                     f"{_f(ngrams['unigrams']['jaccard'], 2)} / {_f(ngrams['bigrams']['jaccard'], 2)}",
                     EXPLAIN["ngrams"][1]))
    topics = metrics.get("topics")
    if topics and topics.get("tvd") is not None:
        rows.append((f"Topic distance ({topics['num_topics']} topics, TVD)", _f(topics["tvd"]), EXPLAIN["topics"][1]))
    leak = metrics.get("leakage") or {}
    copy = leak.get("copying")
    if copy:
        rows.append((f"Copied {copy['n']}-word runs from training",
                     f"{copy['num_with_copy']} of {copy['num_synthetic']} ({copy['fraction']:.1%})",
                     EXPLAIN["copying"][1]))
    near = leak.get("nearest_neighbour")
    if near:
        rows.append(("Closer to training than held-out", f"{near['closer_to_train']:.1%}", EXPLAIN["nearest"][1]))
    mia = leak.get("membership_inference")
    if mia:
        rows.append(("Membership inference AUC (loss)", _f(mia["auc"]), EXPLAIN["mia"][1]))
    return rows


def guarantee_line(epsilon: float, delta: float | None) -> str:
    if not math.isfinite(epsilon):
        return "no differential privacy (ε = ∞): the synthetic data may reveal training records"
    return f"(ε = {fmt_eps(epsilon)}, δ = {delta:.2g}) differential privacy"  # ε rounded up, as in the report
