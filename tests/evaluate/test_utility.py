"""Downstream classifiers: real sentiment is learnable, unseen labels are handled, the transformer path trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsynth.errors import DpsynthError
from dpsynth.evaluate import utility


def test_tfidf_trained_on_real_beats_chance(reviews) -> None:
    train, test = reviews.iloc[:2000], reviews.iloc[3000:4000]
    score = utility.tfidf_classifier_score(train["text"].tolist(), train["sentiment"].tolist(),
                                           test["text"].tolist(), test["sentiment"].tolist())
    assert score.num_classes == 2 and score.num_test == 1000
    assert score.accuracy > score.majority_accuracy + 0.1  # measured ≈ 0.69 vs 0.57
    assert 0.5 < score.macro_f1 <= 1.0


def test_tfidf_on_shuffled_labels_is_near_chance(reviews) -> None:
    train, test = reviews.iloc[:1000], reviews.iloc[3000:4000]
    shuffled = train["sentiment"].sample(frac=1.0, random_state=1).tolist()
    score = utility.tfidf_classifier_score(train["text"].tolist(), shuffled, test["text"].tolist(),
                                           test["sentiment"].tolist())
    assert abs(score.accuracy - 0.5) < 0.08


def test_labels_unseen_in_training_are_handled() -> None:
    train = ["good film", "great film", "bad film", "awful film"] * 5
    labels = ["pos", "pos", "neg", "neg"] * 5
    test = ["good film", "bad film", "a film about cats"]
    score = utility.tfidf_classifier_score(train, labels, test, ["pos", "neg", "cats"])
    assert score.num_classes == 3 and score.train_classes == 2
    assert score.accuracy == pytest.approx(2 / 3)
    # macro-F1 over the union: "cats" (never predicted) counts 0; the class "cats" was mistaken for has F1 2/3
    assert score.macro_f1 == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_single_class_training_set_predicts_it() -> None:
    score = utility.tfidf_classifier_score(["a b", "c d"], ["x", "x"], ["e f", "g h"], ["x", "y"])
    assert score.accuracy == 0.5 and score.train_classes == 1


def test_labels_compared_as_strings() -> None:
    score = utility.tfidf_classifier_score(["good", "bad"] * 5, [5, 1] * 5, ["good", "bad"], ["5", "1"])
    assert score.accuracy == 1.0


def test_utility_for_column_reports_both_sides(reviews) -> None:
    syn, real_train, test = reviews.iloc[:300], reviews.iloc[500:1100], reviews.iloc[2000:2300]
    res = utility.utility_for_column(
        "sentiment", (syn["text"].tolist(), syn["sentiment"].tolist()),
        (test["text"].tolist(), test["sentiment"].tolist()),
        (real_train["text"].tolist(), real_train["sentiment"].tolist()))
    d = res.to_dict()
    assert d["synthetic"]["num_train"] == 300 and d["real"]["num_train"] == 600
    assert d["classifier"] == "tfidf"
    with pytest.raises(DpsynthError, match="unknown classifier"):
        utility.classifier_score("svm", ["a"], ["x"], ["b"], ["x"])


def test_bundled_encoder_is_located() -> None:
    folder = utility.bundled_encoder_path()
    assert (folder / "config.json").is_file() and folder.name == "model"


def _tiny_encoder(folder: Path) -> Path:
    """A 1-layer BERT with a word-level vocabulary, saved like a local checkpoint (random weights)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["good", "great", "lovely", "bad", "awful", "boring", "the", "film", "was", "a", "plot", "cast"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizer(vocab=vocab)
    assert tokenizer.unk_token_id not in tokenizer("the film was good")["input_ids"]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    return folder


def test_transformer_classifier_learns_a_keyword_task(tmp_path: Path) -> None:
    folder = _tiny_encoder(tmp_path / "enc")
    pos = ["the film was good", "a great cast", "lovely plot", "the cast was great", "good film"]
    neg = ["the film was bad", "an awful cast", "boring plot", "the cast was awful", "bad film"]
    texts = (pos + neg) * 24  # one epoch = 30 steps: enough for this tiny BERT (≥ 9/11 for seeds 0-5 but one)
    labels = (["pos"] * 5 + ["neg"] * 5) * 24
    settings = utility.TransformerSettings(model=str(folder), epochs=1, batch_size=8, learning_rate=3e-3,
                                           device="cpu", show_progress=False)
    score = utility.transformer_classifier_score(texts, labels, pos + neg + ["a plot"], ["pos"] * 5 + ["neg"] * 5
                                                 + ["meh"], settings)
    assert score.num_classes == 3 and score.train_classes == 2 and score.num_train == 240
    assert score.accuracy >= 8 / 11  # keyword task learned (the unseen "meh" can never be right); chance 5/11


def test_transformer_classifier_rejects_missing_folder(tmp_path: Path) -> None:
    settings = utility.TransformerSettings(model=str(tmp_path / "nope"), device="cpu", show_progress=False)
    with pytest.raises(DpsynthError, match="not a local model folder"):
        utility.transformer_classifier_score(["a", "b"], ["x", "y"], ["a"], ["x"], settings)


@pytest.mark.real_model
def test_transformer_classifier_on_bundled_minilm() -> None:
    pos = ["a wonderful, moving film", "great acting and a sharp script", "I loved every minute",
           "a joy from start to finish"] * 4
    neg = ["a dull, lifeless mess", "terrible acting and a weak script", "I hated every minute",
           "a chore from start to finish"] * 4
    settings = utility.TransformerSettings(epochs=3, batch_size=8, learning_rate=2e-4, device="cpu",
                                           show_progress=False)
    score = utility.transformer_classifier_score(pos + neg, ["pos"] * 16 + ["neg"] * 16,
                                                 ["a wonderful script", "a lifeless film", "loved it", "hated it"],
                                                 ["pos", "neg", "pos", "neg"], settings)
    assert score.accuracy == 1.0  # pretrained sentence knowledge transfers to unseen phrasings
