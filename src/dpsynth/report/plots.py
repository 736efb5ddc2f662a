"""Report figures as base64 PNG strings, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Embedding the PNGs in the HTML keeps the report one self-contained file that can be mailed or archived.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

REAL_COLOUR = "#1f77b4"
SYN_COLOUR = "#ff7f0e"
TRAIN_COLOUR = "#7f7f7f"


def _figure(width: float = 6.0, height: float = 3.2) -> Any:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_base64_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def length_histogram(hist: dict[str, Any]) -> str:
    """Words per record, real vs synthetic, as normalised step histograms on shared bins."""
    edges = np.asarray(hist["edges"], dtype=float)
    fig = _figure()
    ax = fig.add_subplot()
    for key, colour, name in (("real", REAL_COLOUR, "real"), ("synthetic", SYN_COLOUR, "synthetic")):
        counts = np.asarray(hist[key], dtype=float)
        share = counts / counts.sum() if counts.sum() else counts
        ax.stairs(share, edges, color=colour, label=name, linewidth=1.8, fill=False)
    ax.set_xlabel("words per record (last bin: everything longer)")
    ax.set_ylabel("share of records")
    ax.legend(frameon=False)
    return to_base64_png(fig)


def label_bars(comp: dict[str, Any], column: str, max_values: int = 25) -> str:
    """Proportions of each label value, real vs synthetic, as grouped bars."""
    values = comp["values"][:max_values]
    x = np.arange(len(values))
    fig = _figure(max(4.0, min(12.0, 0.45 * len(values) + 2.5)))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [comp["real"][v] for v in values], 0.4, color=REAL_COLOUR, label="real")
    ax.bar(x + 0.2, [comp["synthetic"][v] for v in values], 0.4, color=SYN_COLOUR, label="synthetic")
    ax.set_xticks(x, [v if len(v) <= 18 else v[:17] + "…" for v in values], rotation=45 if len(values) > 6 else 0,
                  ha="right" if len(values) > 6 else "center")
    ax.set_ylabel("share of records")
    ax.set_title(f"{column} (TVD {comp['tvd']:.3f})", fontsize=10)
    ax.legend(frameon=False)
    return to_base64_png(fig)


def pca_scatter(pca: dict[str, Sequence[Sequence[float]]]) -> str:
    """2-D PCA (fitted on real embeddings) of real and synthetic records."""
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    for key, colour in (("real", REAL_COLOUR), ("synthetic", SYN_COLOUR)):
        pts = np.asarray(pca.get(key) or [], dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.45, color=colour, label=f"{key} ({len(pts)})", linewidths=0)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(frameon=False, markerscale=2)
    return to_base64_png(fig)


def utility_bars(utility: Sequence[dict[str, Any]]) -> str:
    """Accuracy per label column: trained on synthetic vs trained on real, with the majority-class line."""
    cols = [u["label_column"] for u in utility]
    x = np.arange(len(cols))
    fig = _figure(max(4.0, 1.6 * len(cols) + 2.5))
    ax = fig.add_subplot()
    syn = [u["synthetic"]["accuracy"] for u in utility]
    ax.bar(x - 0.2, syn, 0.4, color=SYN_COLOUR, label="trained on synthetic")
    if any(u.get("real") for u in utility):
        real = [u["real"]["accuracy"] if u.get("real") else 0.0 for u in utility]
        ax.bar(x + 0.2, real, 0.4, color=REAL_COLOUR, label="trained on real")
    for i, u in enumerate(utility):
        maj = u["synthetic"]["majority_accuracy"]
        ax.hlines(maj, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="majority class" if i == 0 else None)
    ax.set_xticks(x, cols)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on real test set")
    ax.legend(frameon=False, fontsize=8)
    return to_base64_png(fig)


def topic_bars(topics: dict[str, Any]) -> str:
    """Share of records per dominant topic (topics named by their top words), real vs synthetic."""
    k = topics["num_topics"]
    names = [", ".join(t[:3]) for t in topics["topics"]]
    y = np.arange(k)
    fig = _figure(6.0, max(2.5, 0.35 * k + 1.2))
    ax = fig.add_subplot()
    ax.barh(y - 0.2, topics["real"], 0.4, color=REAL_COLOUR, label="real")
    ax.barh(y + 0.2, topics["synthetic"], 0.4, color=SYN_COLOUR, label="synthetic")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of records (dominant topic)")
    ax.legend(frameon=False, fontsize=8)
    return to_base64_png(fig)
