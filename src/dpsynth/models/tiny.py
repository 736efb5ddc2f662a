"""Tiny causal LMs and a byte tokenizer built from configs, with no download.

Why: tests and fast end-to-end runs need real Hugging Face models (same classes, same save/load paths, same LoRA
and clipping code paths as SmolLM2) but seconds of CPU, and this machine cannot reach the model hub. The models
are randomly initialised from a fixed seed, so their outputs are meaningless but reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BYTE_VOCAB_SIZE = 258  # 256 bytes, then EOS (id 256) and PAD (id 257)


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per UTF-8 byte (ids 0-255), then `<|endoftext|>` and `<|pad|>`.

    Needs no training data, covers every string, and decodes back to the exact original text, so tests of
    encoding, truncation and sampling do not depend on a downloaded vocabulary.
    """
    # ByteLevel shows byte b as a printable character; order the vocabulary by byte value so that id == byte.
    vocab = {char: b for b, char in enumerate(_byte_level_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def _byte_level_chars() -> list[str]:
    """The printable character the ByteLevel pre-tokenizer uses for each byte value 0-255.

    Printable Latin-1 bytes stand for themselves; the others are moved, in order, to code points from 256 up.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    chars, shifted = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    if set(chars) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("the tokenizers library changed its ByteLevel alphabet")
    return chars


def tiny_llama(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    *,
    kv_heads: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A Llama-architecture causal LM (the SmolLM2 family), tied embeddings by default as in SmolLM2.

    `kv_heads` < `heads` gives grouped-query attention like SmolLM2 (9 heads, 3 key/value heads).
    """
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return _build(LlamaForCausalLM, config, seed)


def tiny_gpt2(vocab_size: int, n_embd: int = 32, n_layer: int = 2, n_head: int = 4, seed: int = 0, *,
              eos_token_id: int | None = None, pad_token_id: int | None = None) -> GPT2LMHeadModel:
    """A GPT-2 causal LM (Conv1D projections, learned positions, wte tied to lm_head as GPT-2 does)."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=512,
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return _build(GPT2LMHeadModel, config, seed)


def _build(cls: type, config: object, seed: int):
    """Initialise under a private RNG so building a model neither depends on nor disturbs the global seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def save_tiny_model_folder(path: str | Path, kind: str = "llama", seed: int = 0) -> Path:
    """Write a complete local Hugging Face folder (tiny model + byte tokenizer) that `load_model(path)` accepts."""
    path = Path(path)
    tokenizer = make_byte_tokenizer()
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if kind == "llama":
        model = tiny_llama(len(tokenizer), seed=seed, **ids)
    elif kind == "gpt2":
        model = tiny_gpt2(len(tokenizer), seed=seed, **ids)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; use 'llama' or 'gpt2'")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
