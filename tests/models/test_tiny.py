"""The byte tokenizer and tiny model builders: exact round trips and seed-determined weights."""

from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from dpsynth.models.tiny import (
    BYTE_VOCAB_SIZE,
    EOS_TOKEN,
    PAD_TOKEN,
    make_byte_tokenizer,
    save_tiny_model_folder,
    tiny_gpt2,
    tiny_llama,
)

TOKENIZER = make_byte_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_any_text(text: str) -> None:
    # split_special_tokens: user text that happens to spell "<|pad|>" must stay plain bytes, not a control token.
    ids = TOKENIZER(text, split_special_tokens=True).input_ids
    assert ids == list(text.encode("utf-8"))  # id == byte value, no BOS, no merges
    assert TOKENIZER.decode(ids) == text


def test_special_token_text_is_only_special_when_asked() -> None:
    assert TOKENIZER("a<|pad|>b").input_ids == [97, 257, 98]
    assert TOKENIZER("a<|pad|>b", split_special_tokens=True).input_ids == list(b"a<|pad|>b")


def test_byte_tokenizer_specials_and_whitespace() -> None:
    assert len(TOKENIZER) == BYTE_VOCAB_SIZE == 258
    assert TOKENIZER.eos_token == EOS_TOKEN and TOKENIZER.eos_token_id == 256
    assert TOKENIZER.pad_token == PAD_TOKEN and TOKENIZER.pad_token_id == 257
    text = "  Spaces , punctuation . kept\n\ttabs é 日本 🎉 "
    ids = TOKENIZER(text).input_ids + [TOKENIZER.eos_token_id, TOKENIZER.pad_token_id]
    assert TOKENIZER.decode(ids, skip_special_tokens=True) == text
    assert TOKENIZER.decode(ids).endswith(EOS_TOKEN + PAD_TOKEN)


def test_byte_tokenizer_survives_save_and_reload(tmp_path) -> None:
    TOKENIZER.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Crème brûlée ☕ 100%"
    assert again(text).input_ids == list(text.encode())
    assert again.decode(again(text).input_ids) == text
    assert (again.eos_token_id, again.pad_token_id) == (256, 257)


def test_tiny_models_are_seeded_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_llama(258, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    b = tiny_llama(258, seed=5)
    c = tiny_llama(258, seed=6)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_llama_shape_and_tying() -> None:
    m = tiny_llama(100, hidden=16, layers=3, heads=4, kv_heads=2)
    assert m.config.num_hidden_layers == 3 and m.config.num_key_value_heads == 2
    assert m.lm_head.weight is m.model.embed_tokens.weight
    untied = tiny_llama(100, tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    logits = m(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 100)


def test_tiny_gpt2_is_tied_like_gpt2() -> None:
    m = tiny_gpt2(258, n_embd=16, n_layer=1, n_head=2)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m(input_ids=torch.tensor([[5, 6]])).logits.shape == (1, 2, 258)


def test_saved_folder_is_complete(tmp_path) -> None:
    folder = save_tiny_model_folder(tmp_path / "tiny", kind="gpt2")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 258
    assert config["eos_token_id"] == 256 and config["pad_token_id"] == 257
    assert (folder / "tokenizer.json").is_file() and any(folder.glob("*.safetensors"))
