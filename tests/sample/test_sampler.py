from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from dpsynth.config import DecodingConfig
from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.encode import encode_records
from dpsynth.errors import DpsynthError
from dpsynth.privacy.labels import public_label_distribution
from dpsynth.sample.generate import encode_prompts
from tests.conftest import sample

CATS = {"category": ["fresh", "rotten"], "movie": ["Up", "Cats", "Heat"]}
COLS = ["category", "movie"]
FAST = DecodingConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def dist():
    return public_label_distribution("uniform", COLS, CATS)


def _read(path):
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, dtype=str)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=str)
    return pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_writes_text_and_labels_in_exact_proportions(tmp_path, tokenizer, tiny_model, dist, suffix):
    out = tmp_path / f"synthetic{suffix}"
    n = 36
    rep = sample(tiny_model, tokenizer, dist, n, out, label_columns=COLS, decoding=FAST, seed=1,
                           batch_size=8, progress=False, drop_empty=False)
    df = _read(out)
    assert list(df.columns) == ["text", *COLS] and len(df) == n == rep.rows_written
    combos = Counter(zip(df["category"], df["movie"]))
    assert set(combos.values()) == {6}  # uniform over 6 combinations, 36 rows: exactly 6 each
    assert not any(t.startswith("category:") for t in df["text"])
    assert rep.new_tokens > 0 and rep.tokens_per_s > 0 and rep.complete and rep.generated_this_run == n
    assert rep.to_dict()["rows_written"] == n


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, tokenizer, tiny_model, dist):
    n, kw = 40, dict(label_columns=COLS, decoding=FAST, seed=5, batch_size=4, chunk_size=8, progress=False)
    full = tmp_path / "full.csv"
    sample(tiny_model, tokenizer, dist, n, full, **kw)

    out = tmp_path / "killed.csv"
    calls = {"n": 0}

    def kill_after_some_steps(module, args, output):
        calls["n"] += 1
        if calls["n"] == 60:  # mid-chunk, after a few chunks were committed
            raise KeyboardInterrupt

    handle = tiny_model.register_forward_hook(kill_after_some_steps)
    try:
        with pytest.raises(KeyboardInterrupt):
            sample(tiny_model, tokenizer, dist, n, out, **kw)
    finally:
        handle.remove()
    written = len(_read(out))
    assert 0 < written < n
    with out.open("a") as f:
        f.write('some half-written row, "with a quote\nand a newline')  # torn write of an uncommitted chunk

    rep = sample(tiny_model, tokenizer, dist, n, out, **kw)
    assert rep.resumed_rows == written and rep.generated_this_run == n - written
    assert out.read_bytes() == full.read_bytes()
    again = sample(tiny_model, tokenizer, dist, n, out, **kw)  # already complete: nothing to do
    assert again.generated_this_run == 0 and again.rows_written == rep.rows_written


def test_resume_with_other_settings_refused(tmp_path, tokenizer, tiny_model, dist):
    out = tmp_path / "s.csv"
    kw = dict(label_columns=COLS, decoding=FAST, batch_size=4, progress=False)
    sample(tiny_model, tokenizer, dist, 8, out, seed=1, **kw)
    with pytest.raises(DpsynthError, match="different settings"):
        sample(tiny_model, tokenizer, dist, 8, out, seed=2, **kw)
    rep = sample(tiny_model, tokenizer, dist, 8, out, seed=2, resume=False, **kw)
    assert rep.resumed_rows == 0 and rep.rows_written == 8


def test_foreign_file_refused(tmp_path, tokenizer, tiny_model, dist):
    out = tmp_path / "s.csv"
    out.write_text("text,category,movie\nhello,fresh,Up\n")
    with pytest.raises(DpsynthError, match="not written by"):
        sample(tiny_model, tokenizer, dist, 4, out, label_columns=COLS, decoding=FAST, progress=False)


def test_postprocessing_counts(tmp_path, tokenizer, tiny_model, model_factory, dist):
    eos_model = model_factory(tokenizer, eos_bias=1e4)
    plain = DecodingConfig(max_new_tokens=10, min_new_tokens=0)
    rep = sample(eos_model, tokenizer, dist, 12, tmp_path / "e.csv", label_columns=COLS, decoding=plain,
                           progress=False)
    # One top-up round redraws the 12, keeps none of them, and the run stops: 24 generations, all dropped.
    assert rep.rows_written == 0 and rep.dropped_empty == 24 and rep.replaced == 0
    assert len(_read(tmp_path / "e.csv")) == 0
    greedy = DecodingConfig(top_k=1, max_new_tokens=6)  # identical prompts → identical texts → duplicates
    rep = sample(tiny_model, tokenizer, dist, 24, tmp_path / "d.csv", label_columns=COLS, decoding=greedy,
                           progress=False, drop_duplicates=True, batch_size=5, chunk_size=10)
    assert rep.rows_written == 6 and rep.dropped_duplicates == 18 + 18 and rep.generated_this_run == 24 + 18


def test_dropped_duplicates_are_redrawn_with_their_labels_and_a_killed_top_up_resumes(tmp_path, tokenizer,
                                                                                      tiny_model, dist):
    """Two new tokens from the top 3: 24 records over 6 label combinations repeat each other in round 0. Top-up
    rounds redraw the dropped ones with the same labels until all 24 are distinct — so the label mix stays
    exactly the declared one — and a run killed inside a top-up round resumes to the same file."""
    import json

    kw = dict(label_columns=COLS, decoding=DecodingConfig(top_k=3, max_new_tokens=2), seed=0, batch_size=2,
              chunk_size=2, progress=False, drop_duplicates=True)
    full = tmp_path / "full.csv"
    rep = sample(tiny_model, tokenizer, dist, 24, full, **kw)
    df = _read(full)
    assert rep.rows_written == 24 == len(df) == len(df.drop_duplicates())
    # Every dropped generation was redrawn (some more than once), in more than one round.
    assert rep.dropped_duplicates > rep.replaced > 0 and rep.topup_rounds >= 2
    assert rep.generated_this_run == 24 + rep.dropped_duplicates
    assert set(Counter(zip(df["category"], df["movie"])).values()) == {4}

    out = tmp_path / "killed.csv"
    progress = tmp_path / ".killed.csv.progress.json"

    def kill_in_the_top_up(module, args, output):
        state = json.loads(progress.read_text())["state"] if progress.exists() else {}
        if state.get("round", 0) >= 1 and state["draws_done"] > 0:  # mid-round: a chunk of the top-up is on disk
            raise KeyboardInterrupt

    handle = tiny_model.register_forward_hook(kill_in_the_top_up)
    try:
        with pytest.raises(KeyboardInterrupt):
            sample(tiny_model, tokenizer, dist, 24, out, **kw)
    finally:
        handle.remove()
    state = json.loads(progress.read_text())["state"]
    assert state["round"] >= 1 and 0 < state["draws_done"] < len(state["members"]) and len(_read(out)) < 24
    resumed = sample(tiny_model, tokenizer, dist, 24, out, **kw)
    assert out.read_bytes() == full.read_bytes() and resumed.replaced == rep.replaced


def test_default_decoding_never_ends_a_record_before_it_starts(tmp_path, tokenizer, model_factory, dist):
    """A model that wants to stop at once still gives every requested row (one token each) by default."""
    eos_model = model_factory(tokenizer, eos_bias=1e4)
    rep = sample(eos_model, tokenizer, dist, 12, tmp_path / "e.csv", label_columns=COLS, decoding=FAST,
                           progress=False, drop_empty=False)  # a random tiny model's token may be whitespace
    assert FAST.min_new_tokens == 1
    assert rep.rows_written == len(_read(tmp_path / "e.csv")) == 12
    assert rep.new_tokens == 2 * 12  # one token, then the end-of-sequence (min_new_tokens=0: EOS alone)


def test_min_new_tokens_checked():
    with pytest.raises(DpsynthError, match="--min-new-tokens"):
        DecodingConfig(max_new_tokens=4, min_new_tokens=5)


def test_unconditional_and_label_mismatch(tmp_path, tokenizer, tiny_model, dist):
    rep = sample(tiny_model, tokenizer, None, 5, tmp_path / "u.jsonl", label_columns=[], decoding=FAST,
                           progress=False, drop_empty=False)
    assert list(_read(tmp_path / "u.jsonl").columns) == ["text"] and rep.rows_written == 5
    with pytest.raises(DpsynthError, match="label columns"):
        sample(tiny_model, tokenizer, dist, 5, tmp_path / "x.csv", label_columns=["category"],
                         progress=False)
    with pytest.raises(DpsynthError, match="no label distribution"):
        sample(tiny_model, tokenizer, None, 5, tmp_path / "x.csv", label_columns=COLS, progress=False)


def test_progress_bar_runs(tmp_path, tokenizer, tiny_model, dist):
    rep = sample(tiny_model, tokenizer, dist, 6, tmp_path / "p.csv", label_columns=COLS, decoding=FAST,
                           batch_size=3, progress=True)
    assert rep.complete


def test_prompts_match_training_encoding(tokenizer):
    """The sampling prompt must be token-for-token the prefix the model was trained on."""
    labels = {"category": "fresh", "movie": "Up"}
    prefix = ControlCodes(COLS).prefix(labels)
    records = encode_records(tokenizer, [prefix], ["A lovely film."], max_tokens=64)
    ids = records[0].input_ids.tolist()
    prompt_ids = encode_prompts(tokenizer, [prefix])[0]
    assert ids[: len(prompt_ids)] == prompt_ids


def test_static_cache_run(tmp_path, tokenizer, tiny_model, dist):
    rep = sample(tiny_model, tokenizer, dist, 20, tmp_path / "s.csv", label_columns=COLS, decoding=FAST,
                           batch_size=4, chunk_size=8, progress=False, drop_empty=False, static_cache=True)
    assert rep.rows_written == 20 and rep.backend == "hf-static"


def test_progress_bar_inside_another_live_display(tmp_path, tokenizer, tiny_model, dist):
    from rich.progress import Progress

    with Progress():  # e.g. the CLI's own stage display
        rep = sample(tiny_model, tokenizer, dist, 4, tmp_path / "p.csv", label_columns=COLS,
                               decoding=FAST, batch_size=2, progress=True)
    assert rep.complete
