"""Offline fixtures for sampling tests: a byte-level BPE tokenizer trained here and tiny Llama models from configs."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "category: fresh | movie: Up\n\nA lovely, funny film about a house with balloons.",
    "category: rotten | movie: Cats\n\nA strange and tiring musical; the effects are odd.",
    "category: fresh\n\nSharp writing, warm performances and a score you will hum for days.",
    "stars: 5 | business: Bars\n\nGreat beer, friendly staff, we will come back!",
]


def make_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes) with <pad> id 0 and <eos> id 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def make_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, eos_bias: float | None = None,
               dtype: torch.dtype = torch.float32, init_range: float = 0.2) -> LlamaForCausalLM:
    """A 2-layer, hidden-32 Llama. `eos_bias` swaps in an lm_head with a bias that favours EOS by that many nats."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=init_range, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    if eos_bias is not None:
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tokenizer.eos_token_id] = eos_bias
        model.lm_head = head
    return model.to(dtype).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_f64(tokenizer):
    return make_model(tokenizer, dtype=torch.float64, init_range=0.5)


@pytest.fixture(scope="session")
def tiny_gpt2_f64(tokenizer):
    """GPT-2 architecture (learned absolute positions, Conv1D, tied head): the reference recipe's model family."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        initializer_range=0.5, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).to(torch.float64).eval()


@pytest.fixture(scope="session")
def model_factory():
    """`make_model` for tests that need a particular variant (EOS bias, dtype, seed)."""
    return make_model
