"""The HTML report is one self-contained file: privacy first, escaped data, embedded PNG plots, no external assets."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from dpsynth.evaluate import textstats
from dpsynth.report.html import render_report, write_report
from dpsynth.report.privacy_text import describe_privacy
from dpsynth.report.summary import summary_rows

EVIL = '<script>alert("x")</script> & <img src=http://evil.example/a.png>'


def _metrics() -> dict:
    real = ["a warm and funny film", "a dull and slow film", "great acting", "poor script"] * 5
    syn = ["a warm film", "slow and dull", "great script", EVIL] * 5
    labels_r, labels_s = ["pos", "neg", "pos", "neg"] * 5, ["pos", "neg", "pos", "<b>neg</b>"] * 5
    score = {"accuracy": 0.7, "macro_f1": 0.65, "num_train": 20, "num_test": 20, "num_classes": 2,
             "train_classes": 2, "majority_accuracy": 0.5}
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "inputs": {"real": {"path": "/data/real.csv", "records": 20, "dropped_empty": 0},
                   "synthetic": {"path": "/runs/r1/synthetic.csv", "records": 20, "dropped_empty": 1}},
        "utility": [{"label_column": "sentiment", "classifier": "tfidf", "synthetic": score,
                     "real": score | {"accuracy": 0.8}}],
        "fidelity": {"num_real": 20, "num_synthetic": 20, "precision": 0.5, "recall": 0.6, "f1": 0.545, "k": 3,
                     "fid": 0.4, "mauve": 0.7, "mauve_buckets": 2},
        "lengths": textstats.length_comparison(real, syn),
        "labels": {"sentiment": textstats.label_comparison(labels_r, labels_s)},
        "ngrams": textstats.ngram_comparison(real, syn),
        "topics": textstats.topic_comparison(real, syn, num_topics=2),
        "leakage": {"copying": {"n": 8, "num_synthetic": 20, "num_with_copy": 2, "fraction": 0.1,
                                "copied_ngram_share": 0.01, "synthetic_indices": [3, 7]},
                    "nearest_neighbour": {"reference_size": 20, "median_to_train": 0.3, "median_to_heldout": 0.31,
                                          "mean_to_train": 0.3, "mean_to_heldout": 0.31, "closer_to_train": 0.52,
                                          "near_duplicate_threshold": 0.02, "near_duplicates_train": 0,
                                          "near_duplicates_heldout": 0},
                    "membership_inference": {"auc": 0.51, "num_members": 10, "num_nonmembers": 10,
                                             "mean_member_loss": 3.0, "mean_nonmember_loss": 3.1}},
        "warnings": ["2 of 20 synthetic records contain a run of ≥ 8 words from a training record."],
        "examples": [{"row": 3, "text": EVIL, "labels": {"sentiment": "<b>neg</b>"}}],
        "timings_s": {"utility": 1.0},
    }


LEDGER = {"epsilon": 4.0, "delta": 1e-6, "unit": "record", "accountant": "pld", "num_units": 20000,
          "mechanisms": [{"name": "dp-sgd", "noise_multiplier": 0.8, "sample_rate": 0.01, "steps": 400}]}


def _pca() -> dict:
    return {"real": [[0.0, 1.0], [1.0, 0.0]], "synthetic": [[0.5, 0.5]]}


def test_report_is_self_contained_and_escaped() -> None:
    page = render_report(_metrics(), describe_privacy(LEDGER), pca=_pca())
    assert page.startswith("<!DOCTYPE html>")
    # nothing is fetched: no external URLs, scripts, stylesheets or fonts
    assert not re.search(r"https?://", page.replace("http://evil.example", ""))
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "http://evil.example" not in page.replace("src=http://evil.example", "")  # only inside escaped text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=http://evil.example/a.png&gt;" in page
    assert "&lt;b&gt;neg&lt;/b&gt;" in page and "<b>neg</b>" not in page
    # every image is an inline PNG that decodes
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(images) >= 5 and len(images) == page.count("<img ")
    for b64 in images:
        assert base64.b64decode(b64).startswith(b"\x89PNG")


def test_privacy_statement_comes_first() -> None:
    page = render_report(_metrics(), describe_privacy(LEDGER, noun="review"))
    assert "Each review&#x27;s influence is bounded" in page
    assert "(ε = 4, δ = 1e-6) differential privacy per record" in page
    assert page.index('id="privacy"') < page.index('id="summary"') < page.index('id="utility"')
    assert page.index('id="warnings"') < page.index('id="summary"')


def test_non_private_and_unknown_are_flagged() -> None:
    page = render_report(_metrics(), describe_privacy({"epsilon": "inf", "non_private": True}))
    assert 'class="privacy non_private"' in page and "WITHOUT differential privacy" in page
    page = render_report(_metrics(), describe_privacy(None))
    assert 'class="privacy unknown"' in page and "guarantee of this synthetic data is unknown" in page


def test_copying_warning_and_explanations_present() -> None:
    page = render_report(_metrics(), describe_privacy(LEDGER))
    assert "2 of 20 synthetic records" in page and "not shown here" in page
    for phrase in ("Good: high (identical sets give 1.0)", "Good: low (identical sets give 0)",
                   "Good: about 0.5", "Good: 0."):
        assert phrase in page


def test_summary_rows_cover_every_metric() -> None:
    rows = summary_rows(_metrics() | {"privacy": describe_privacy(LEDGER).to_dict()})
    names = [r[0] for r in rows]
    assert rows[0] == ("Privacy", "ε = 4, δ = 1e-6 per record", rows[0][2])
    assert "Accuracy · sentiment (tfidf)" in names and "MAUVE" in names and "FID (embeddings)" in names
    assert ("Copied 8-word runs from training", "2 of 20 (10.0%)", "0") in rows
    assert dict((r[0], r[1]) for r in rows)["Accuracy · sentiment (tfidf)"] == "0.700 (real-trained 0.800)"


def test_write_report(tmp_path: Path) -> None:
    path = write_report(tmp_path / "out" / "report.html", _metrics(), describe_privacy(None))
    assert path.read_text(encoding="utf-8").endswith("</html>\n")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no leftover temporary file
