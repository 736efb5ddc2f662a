"""The whole pipeline with the bundled SmolLM2-135M on a few dozen real reviews (tens of seconds on 2 cores).

Checks what a user would look at first: the synthetic text is real English (not byte soup), the control codes
are stripped from it, and every row carries one of the labels the model was prompted with.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dpsynth.commands.run import run
from dpsynth.config import RunConfig
from dpsynth.data.demo import load_demo_dataset

pytestmark = pytest.mark.real_model


def _english_words() -> set[str]:
    """The 50,000 most frequent English words (Norvig's count_1w list, shipped in scattertext's data folder)."""
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"
    words = []
    with open(folder / "count_1w.txt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= 50_000:
                break
            words.append(line.split("\t", 1)[0])
    return set(words)


def test_bundled_model_writes_labelled_english(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    load_demo_dataset(max_records=40, seed=1).to_csv(data, index=False)
    out = tmp_path / "run"
    values = tmp_path / "label_values.json"  # the demo's public label set
    values.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    result = run(RunConfig(data=data, text_column="text", label_columns=["sentiment"], out=out, epsilon=4.0,
                           epochs=1.0, batch_size=20, max_tokens=48, num_samples=8, max_new_tokens=24,
                           sample_batch_size=8, seed=3, label_distribution="uniform", label_values=values))
    synth = pd.read_csv(result.synthetic_path)
    assert len(synth) >= 6  # empty generations may be dropped (counted in run.json)
    assert set(synth["sentiment"]) <= {"fresh", "rotten"} and synth["sentiment"].nunique() == 2
    text = " ".join(synth["text"].astype(str))
    assert "sentiment:" not in text, "control codes must be stripped from the synthetic text"
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 40
    vocab = _english_words()
    share = sum(w in vocab for w in words) / len(words)
    assert share > 0.8, f"only {share:.0%} of words are English: {text[:200]!r}"
    ledger = json.loads(result.privacy_path.read_text())
    # With 40 records a DP label histogram is mostly noise, so this test declares a uniform label mix (free).
    assert ledger["epsilon"] <= 4.0 + 1e-6 and [m["name"] for m in ledger["mechanisms"]] == ["dp-sgd"]
    assert ledger["mechanisms"][0]["steps"] == 2
