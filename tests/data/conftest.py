"""Offline fixtures for data tests: a byte-level tokenizer built here (one token per UTF-8 byte, no download)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>"]


def make_test_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every string encodes, and its token count is its UTF-8 byte count.

    Ids: <pad> 0, <eos> 1, <bos> 2, then the 256 byte symbols. Predictable lengths make truncation checks exact.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_test_tokenizer()
