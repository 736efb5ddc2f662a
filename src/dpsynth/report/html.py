"""The self-contained HTML evaluation report: one file, inline CSS, plots as base64 PNGs, no external assets.

Order follows what a reader needs first: the privacy guarantee, then warnings, a summary table, and one section
per metric with a sentence on what it means and what good looks like. Every piece of text that comes from data
(synthetic examples, label values, n-grams, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpsynth.report import plots
from dpsynth.report.privacy_text import PrivacyStatement
from dpsynth.report.summary import EXPLAIN, summary_rows

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em}
.privacy{padding:1em 1.2em;border-radius:6px;margin:1em 0}
.privacy.private{background:#eef7ee;border:1px solid #9c9}
.privacy.non_private{background:#fdecea;border:2px solid #d33}
.privacy.unknown{background:#fff6e0;border:2px solid #e0a000}
.privacy .headline{font-size:1.1em;font-weight:600}
.warn{background:#fff3cd;border-left:4px solid #e0a000;padding:.5em .8em;margin:.4em 0}
.warn.severe{background:#fdecea;border-left-color:#d33}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.explain{color:#444;font-size:.93em;margin:.3em 0}
.good{color:#2a6b2a;font-size:.9em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.example{background:#fafafa;border:1px solid #e5e5e5;border-radius:4px;padding:.5em .8em;margin:.5em 0;
white-space:pre-wrap}
.labels{color:#555;font-size:.85em}
.cols{display:flex;gap:2em;flex-wrap:wrap}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return esc(x)
    return f"{x:.{digits}f}"


def _explain(key: str) -> str:
    what, good = EXPLAIN[key]
    return f'<p class="explain">{esc(what)} <span class="good">Good: {esc(good)}.</span></p>'


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            cells.append(f"<td{cls}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _privacy_section(statement: PrivacyStatement) -> str:
    parts = [f'<section id="privacy" class="privacy {esc(statement.status)}">', "<h2>Privacy</h2>"]
    for w in statement.warnings:
        parts.append(f'<div class="warn severe"><strong>Warning:</strong> {esc(w)}</div>')
    parts.append(f'<p class="headline">{esc(statement.headline)}</p>')
    parts.append(f"<p><strong>{esc(statement.guarantee)}</strong></p>")
    if statement.details:
        parts.append("<ul>" + "".join(f"<li>{esc(d)}</li>" for d in statement.details) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _utility_section(utility: Sequence[dict[str, Any]]) -> str:
    if not utility:
        return ('<section id="utility"><h2>Downstream utility</h2><p class="explain">No label columns were given, '
                "so no classifier was trained (pass --label-columns).</p></section>")
    rows = []
    for u in utility:
        s, r = u["synthetic"], u.get("real")
        rows.append([u["label_column"], u["classifier"], _num(s["accuracy"]), _num(r["accuracy"]) if r else "–",
                     _num(s["macro_f1"]), _num(r["macro_f1"]) if r else "–", _num(s["majority_accuracy"]),
                     f"{s['num_train']:,} / {r['num_train']:,}" if r else f"{s['num_train']:,}", f"{s['num_test']:,}",
                     f"{s['train_classes']} of {s['num_classes']}"])
    table = _table(["label", "classifier", "accuracy (synthetic-trained)", "accuracy (real-trained)",
                    "macro-F1 (synthetic)", "macro-F1 (real)", "majority class", "train records (syn / real)",
                    "test records", "classes seen in synthetic"], rows, numeric=(2, 3, 4, 5, 6))
    return ('<section id="utility"><h2>Downstream utility</h2>' + _explain("accuracy") + _explain("macro_f1")
            + table + _img(plots.utility_bars(utility), "utility bars") + "</section>")


def _fidelity_section(fid: dict[str, Any] | None, pca: dict[str, Any] | None) -> str:
    if not fid:
        return ('<section id="fidelity"><h2>Fidelity (embeddings)</h2><p class="explain">Embedding metrics were '
                "not computed.</p></section>")
    rows = [["precision", _num(fid.get("precision"))], ["recall", _num(fid.get("recall"))],
            ["F1", _num(fid.get("f1"))], ["FID", _num(fid.get("fid"), 4)], ["MAUVE", _num(fid.get("mauve"))]]
    parts = ['<section id="fidelity"><h2>Fidelity (sentence embeddings)</h2>',
             f'<p class="meta">{fid["num_real"]:,} real and {fid["num_synthetic"]:,} synthetic records, '
             f"k = {fid.get('k')}.</p>",
             _explain("precision"), _explain("recall"), _explain("f1"), _explain("fid"), _explain("mauve"),
             _table(["metric", "value"], rows, numeric=(1,))]
    if pca and pca.get("real"):
        parts.append("<p class=\"explain\">Below: both sets projected on the two main directions of the real "
                     "embeddings. Synthetic points should spread over the same regions as real ones.</p>")
        parts.append(_img(plots.pca_scatter(pca), "PCA of embeddings"))
    parts.append("</section>")
    return "\n".join(parts)


def _lengths_section(lengths: dict[str, Any] | None) -> str:
    if not lengths:
        return ""
    keys = ["mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max"]
    rows = [[k, _num(lengths["real"][k], 1), _num(lengths["synthetic"][k], 1)] for k in keys]
    return ('<section id="lengths"><h2>Length</h2>' + _explain("length")
            + _table(["words per record", "real", "synthetic"], rows, numeric=(1, 2))
            + _img(plots.length_histogram(lengths["histogram"]), "length histogram") + "</section>")


def _labels_section(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    parts = ['<section id="labels"><h2>Label distribution</h2>', _explain("label_tvd")]
    for col, comp in labels.items():
        parts.append(f"<h3>{esc(col)}</h3>")
        rows = [[v, f"{comp['real'][v]:.3f}", f"{comp['synthetic'][v]:.3f}"] for v in comp["values"][:50]]
        parts.append(_table(["value", "real share", "synthetic share"], rows, numeric=(1, 2)))
        parts.append(_img(plots.label_bars(comp, col), f"label distribution {col}"))
    parts.append("</section>")
    return "\n".join(parts)


def _ngram_list(pairs: Sequence[Sequence[Any]], min_count: int) -> str:
    shown = [f"{esc(g)} ({c})" for g, c in pairs if c >= min_count]
    return ", ".join(shown) if shown else "–"


def _ngrams_section(ngrams: dict[str, Any] | None) -> str:
    if not ngrams:
        return ""
    parts = ['<section id="ngrams"><h2>Frequent words</h2>', _explain("ngrams")]
    for key, name in (("unigrams", "words"), ("bigrams", "word pairs")):
        block = ngrams[key]
        # real n-grams come pre-filtered to frequent ones (≥ 3 occurrences); filter again for hand-made metrics
        parts.append(f"<h3>Top {esc(name)} (overlap {block['jaccard']:.2f})</h3>")
        parts.append(_table(["set", f"most frequent {name} (count)"],
                            [["real", _ngram_list(block["real"], 3)],
                             ["synthetic", _ngram_list(block["synthetic"], 1)]]))
    parts.append("</section>")
    return "\n".join(parts)


def _topics_section(topics: dict[str, Any] | None) -> str:
    if not topics or not topics.get("num_topics"):
        return ""
    rows = [[i + 1, ", ".join(words), f"{topics['real'][i]:.3f}", f"{topics['synthetic'][i]:.3f}"]
            for i, words in enumerate(topics["topics"])]
    return ('<section id="topics"><h2>Topics</h2>' + _explain("topics")
            + f'<p class="meta">TVD {topics["tvd"]:.3f}; records without any topic word: real '
            f'{topics["real_no_topic"]:.1%}, synthetic {topics["synthetic_no_topic"]:.1%}.</p>'
            + _table(["topic", "top words", "real share", "synthetic share"], rows, numeric=(2, 3))
            + _img(plots.topic_bars(topics), "topic shares") + "</section>")


def _leakage_section(leak: dict[str, Any] | None) -> str:
    leak = leak or {}
    parts = ['<section id="leakage"><h2>Leakage checks</h2>']
    copy = leak.get("copying")
    parts.append("<h3>Verbatim copying</h3>" + _explain("copying"))
    if copy:
        cls = "warn severe" if copy["num_with_copy"] else "explain"
        parts.append(f'<p class="{cls}">{copy["num_with_copy"]:,} of {copy["num_synthetic"]:,} synthetic records '
                     f"({copy['fraction']:.2%}) share a run of ≥ {copy['n']} consecutive words with a training "
                     f"record; {copy['copied_ngram_share']:.2%} of all synthetic {copy['n']}-word runs occur in "
                     "training records.")
        if copy["num_with_copy"]:
            parts.append('<p class="explain">These records are not shown here (their text is partly training '
                         "text); their row numbers are listed in metrics.json under leakage.copying.</p>")
    else:
        parts.append('<p class="explain">Not checked: pass the training file (--train) to look for copying.</p>')
    near = leak.get("nearest_neighbour")
    parts.append("<h3>Nearest neighbours</h3>" + _explain("nearest"))
    if near:
        rows = [["median cosine distance", _num(near["median_to_train"], 4), _num(near["median_to_heldout"], 4)],
                ["mean cosine distance", _num(near["mean_to_train"], 4), _num(near["mean_to_heldout"], 4)],
                [f"near-duplicates (distance ≤ {near['near_duplicate_threshold']})", near["near_duplicates_train"],
                 near["near_duplicates_heldout"]]]
        parts.append(f'<p class="explain">Closer to a training record than to a held-out one: '
                     f"<strong>{near['closer_to_train']:.1%}</strong> (reference sets of "
                     f"{near['reference_size']:,} records each).</p>")
        parts.append(_table(["synthetic → nearest", "training", "held-out real"], rows, numeric=(1, 2)))
    else:
        parts.append('<p class="explain">Not checked: needs --train and the embedding metrics.</p>')
    mia = leak.get("membership_inference")
    if mia:
        parts.append("<h3>Membership inference</h3>" + _explain("mia"))
        parts.append(f'<p class="explain">AUC {mia["auc"]:.3f} on {mia["num_members"]:,} training vs '
                     f"{mia['num_nonmembers']:,} held-out records (mean loss {mia['mean_member_loss']:.3f} vs "
                     f"{mia['mean_nonmember_loss']:.3f}).</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _examples_section(examples: Sequence[dict[str, Any]]) -> str:
    if not examples:
        return ""
    parts = ['<section id="examples"><h2>Synthetic examples</h2>',
             '<p class="explain">Randomly chosen synthetic records (records flagged for copying are never shown).'
             "</p>"]
    for ex in examples:
        labels = " · ".join(f"{esc(k)}: {esc(v)}" for k, v in ex.get("labels", {}).items())
        parts.append(f'<div class="example"><div class="labels">row {int(ex["row"])}'
                     f"{' · ' + labels if labels else ''}</div>{esc(ex['text'])}</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_report(metrics: dict[str, Any], statement: PrivacyStatement, *, pca: dict[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    inputs = metrics.get("inputs") or {}
    meta = []
    for key in ("real", "synthetic", "train"):
        info = inputs.get(key)
        if info:
            meta.append(f"{key}: {esc(Path(info['path']).name)} ({info['records']:,} records"
                        + (f", {info['dropped_empty']} empty dropped" if info.get("dropped_empty") else "") + ")")
    warnings = [w for w in metrics.get("warnings") or [] if w not in statement.warnings]
    summary = _table(["metric", "value", "good"], summary_rows(metrics))
    body = [
        "<h1>Synthetic data evaluation</h1>",
        f'<p class="meta">{" · ".join(meta)}<br>created {esc(metrics.get("created", ""))} by dpsynth</p>',
        _privacy_section(statement),
    ]
    if warnings:
        body.append('<section id="warnings"><h2>Warnings</h2>'
                    + "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings) + "</section>")
    body += [
        f'<section id="summary"><h2>Summary</h2>{summary}</section>',
        _utility_section(metrics.get("utility") or []),
        _fidelity_section(metrics.get("fidelity"), pca),
        _lengths_section(metrics.get("lengths")),
        _labels_section(metrics.get("labels") or {}),
        _ngrams_section(metrics.get("ngrams")),
        _topics_section(metrics.get("topics")),
        _leakage_section(metrics.get("leakage")),
        _examples_section(metrics.get("examples") or []),
    ]
    timings = metrics.get("timings_s") or {}
    if timings:
        body.append('<p class="meta">Timings: ' + esc(", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
                    + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>dpsynth evaluation report</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def write_report(path: str | Path, metrics: dict[str, Any], statement: PrivacyStatement, *,
                 pca: dict[str, Any] | None = None) -> Path:
    """Render and write the report atomically (a reader never sees half a file)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(metrics, statement, pca=pca)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
