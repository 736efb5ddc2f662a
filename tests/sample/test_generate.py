from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from dpsynth.config import DecodingConfig
from dpsynth.errors import DpsynthError
from dpsynth.sample.generate import (
    Decoder,
    GenerationStats,
    clean_text,
    encode_prompts,
    filter_logits,
    generate_texts,
    generate_token_ids,
)


def greedy(new_tokens: int, **kw) -> DecodingConfig:
    return DecodingConfig(top_k=1, max_new_tokens=new_tokens, min_new_tokens=0, **kw)


def plain(new_tokens: int, **kw) -> DecodingConfig:
    """Sampling with EOS allowed from the first token (min_new_tokens=0), as `model.generate` does."""
    return DecodingConfig(max_new_tokens=new_tokens, min_new_tokens=0, **kw)


PROMPTS = [
    "category: fresh | movie: Up\n\n",
    "stars: 5\n\n",
    "category: fresh | movie: Up\n\n",
    "x\n\n",
    "category: rotten | movie: a much longer title than the rest\n\n",
    "stars: 5\n\n",
    "category: fresh | movie: Up\n\n",
]


def _hf_reference(model, tokenizer, prompt, max_new_tokens, **kw):
    """Unbatched `model.generate`, greedy: the ground truth for the batched, bucketed, left-padded loop."""
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **kw)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("static_cache", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_greedy_batched_matches_unbatched_generate(tokenizer, tiny_model_f64, batch_size, static_cache):
    got = generate_token_ids(tiny_model_f64, tokenizer, PROMPTS, greedy(12), batch_size=batch_size,
                             static_cache=static_cache)
    for prompt, ids in zip(PROMPTS, got):
        assert ids == _hf_reference(tiny_model_f64, tokenizer, prompt, 12)


@pytest.mark.parametrize("static_cache", [False, True])
def test_greedy_batched_matches_generate_gpt2(tokenizer, tiny_gpt2_f64, static_cache):
    got = generate_token_ids(tiny_gpt2_f64, tokenizer, PROMPTS, greedy(10), batch_size=4, static_cache=static_cache)
    refs = {p: _hf_reference(tiny_gpt2_f64, tokenizer, p, 10) for p in set(PROMPTS)}
    assert got == [refs[p] for p in PROMPTS]


def test_greedy_with_repetition_penalty_matches_generate(tokenizer, tiny_model_f64):
    got = generate_token_ids(tiny_model_f64, tokenizer, PROMPTS[:5], greedy(12, repetition_penalty=1.5), batch_size=5)
    plain = generate_token_ids(tiny_model_f64, tokenizer, PROMPTS[:5], greedy(12), batch_size=5)
    assert got != plain  # the penalty changes something on this model
    for prompt, ids in zip(PROMPTS, got):
        assert ids == _hf_reference(tiny_model_f64, tokenizer, prompt, 12, repetition_penalty=1.5)


def test_stops_at_eos_and_compaction_keeps_rows_aligned(tokenizer, model_factory):
    # EOS favoured by a bias: lengths vary per row, rows finish at different steps and get compacted away.
    model = model_factory(tokenizer, eos_bias=4.0, dtype=torch.float64, init_range=0.5, seed=1)
    prompts = PROMPTS * 3
    got = generate_token_ids(model, tokenizer, prompts, greedy(40), batch_size=len(prompts))
    eos = tokenizer.eos_token_id
    lengths = []
    refs = {p: _hf_reference(model, tokenizer, p, 40) for p in set(prompts)}
    for prompt, ids in zip(prompts, got):
        ref = refs[prompt]
        assert ids == ref[: len(ids)]
        assert eos not in ids[:-1]
        lengths.append(len(ids))
    sampled = generate_token_ids(model, tokenizer, prompts, plain(40), batch_size=len(prompts), seed=3)
    lengths += [len(s) for s in sampled]
    assert all(s[-1] == eos for s in sampled if len(s) < 40)
    assert len(set(lengths)) > 3 and min(lengths) < 40  # some stopped early, at different steps


def test_texts_exclude_prompt_and_eos(tokenizer, model_factory):
    model = model_factory(tokenizer, eos_bias=3.0, seed=2)
    stats = GenerationStats()
    texts = generate_texts(model, tokenizer, PROMPTS, plain(30), batch_size=4, seed=0, stats=stats)
    ids = generate_token_ids(model, tokenizer, PROMPTS, plain(30), batch_size=4, seed=0)
    assert len(texts) == len(PROMPTS)
    for prompt, text, row in zip(PROMPTS, texts, ids):
        assert "<eos>" not in text and not text.startswith(prompt.strip())
        body = [t for t in row if t != tokenizer.eos_token_id]
        assert text == clean_text(tokenizer.decode(body, skip_special_tokens=True))
        assert not any(ord(ch) < 32 and ch not in "\t\n" for ch in text)
    assert stats.prompts == len(PROMPTS) and stats.new_tokens == sum(len(r) for r in ids)
    assert stats.batches == 2 and stats.batch_size == 4


def test_eos_forced_gives_empty_texts(tokenizer, model_factory):
    model = model_factory(tokenizer, eos_bias=1e4)
    assert generate_texts(model, tokenizer, PROMPTS[:3], plain(5), batch_size=3) == ["", "", ""]
    # ... unless min_new_tokens forbids EOS for the first tokens.
    ids = generate_token_ids(model, tokenizer, PROMPTS[:3], DecodingConfig(max_new_tokens=5, min_new_tokens=3),
                             batch_size=3)
    assert all(len(r) == 4 and r[-1] == tokenizer.eos_token_id for r in ids)


def test_seeded_sampling_is_reproducible(tokenizer, tiny_model):
    kw = dict(batch_size=3)
    a = generate_texts(tiny_model, tokenizer, PROMPTS, plain(15, top_k=50, top_p=0.9), **kw, seed=11)
    b = generate_texts(tiny_model, tokenizer, PROMPTS, plain(15, top_k=50, top_p=0.9), **kw, seed=11)
    c = generate_texts(tiny_model, tokenizer, PROMPTS, plain(15, top_k=50, top_p=0.9), **kw, seed=12)
    assert a == b and a != c
    # Identical prompts in one batch still get different samples.
    assert a[0] != a[2] or a[0] != a[6]


def test_progress_reports_every_prompt(tokenizer, tiny_model):
    seen: list[int] = []
    generate_texts(tiny_model, tokenizer, PROMPTS, plain(3), batch_size=3, progress=seen.append)
    assert seen == [3, 3, 1]


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (0, 0.5), (5, 1.0), (3, 0.3), (0, 1.0)])
def test_filter_matches_transformers_warpers(top_k, top_p):
    torch.manual_seed(0)
    scores = torch.randn(16, 300) * 3
    vals, idx = filter_logits(scores, top_k, top_p)
    ref = scores.clone()
    if top_k > 0:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    for r in range(16):
        kept = set(idx[r][torch.isfinite(vals[r])].tolist())
        assert kept == set(torch.isfinite(ref[r]).nonzero().squeeze(-1).tolist())


def test_empty_prompt_starts_from_record_separator(tokenizer):
    ids = encode_prompts(tokenizer, ["", "a"])
    assert ids[0] == [tokenizer.eos_token_id]  # no BOS in this tokenizer: EOS separates records in training
    assert ids[1] == tokenizer("a")["input_ids"]


def test_bad_decoding_settings_are_user_errors(tokenizer, tiny_model):
    with pytest.raises(DpsynthError):
        generate_texts(tiny_model, tokenizer, PROMPTS, DecodingConfig(top_p=0.0))
    with pytest.raises(DpsynthError):
        generate_texts(tiny_model, tokenizer, PROMPTS, DecodingConfig(max_new_tokens=2, min_new_tokens=3))


def test_lora_wrapped_model(tokenizer, tiny_model_f64, model_factory):
    model = get_peft_model(model_factory(tokenizer, dtype=torch.float64, init_range=0.5),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.eval()
    # Fresh LoRA adapters start at zero, so outputs equal the base model's.
    got = generate_token_ids(model, tokenizer, PROMPTS[:4], greedy(8), batch_size=4)
    want = generate_token_ids(tiny_model_f64, tokenizer, PROMPTS[:4], greedy(8), batch_size=4)
    assert got == want


def test_clean_text():
    assert clean_text("  a\r\nb\x00c\rd\te\x7f \n") == "a\nbcd\te"


def test_static_decoder_is_reused_across_calls(tokenizer, tiny_model_f64):
    decoder = Decoder(tiny_model_f64, tokenizer, greedy(6), batch_size=4, static_cache=True)
    first = decoder.token_ids(encode_prompts(tokenizer, PROMPTS[:4]))
    static = decoder._static
    second = decoder.token_ids(encode_prompts(tokenizer, PROMPTS[1:4] + PROMPTS[5:6]))  # same shapes
    assert static is not None and decoder._static is static  # no rebuild (on CUDA: no recompilation) between calls
    assert first[1:] == second[:3]
    decoder.close()
    assert decoder._static is None


def test_prompt_plus_new_tokens_past_the_context_is_refused(tokenizer, tiny_model) -> None:
    # (the tiny model has 512 positions; its learned-position twin would index past its table)
    ids = [[5, 6, 7]]  # 3 + 510 tokens: the last is never fed back, so 512 positions hold it; 511 new would not
    assert len(generate_token_ids(tiny_model, tokenizer, ids,
                                  DecodingConfig(max_new_tokens=510, min_new_tokens=510))[0]) == 510
    with pytest.raises(DpsynthError, match="--max-new-tokens 510 or less"):
        generate_token_ids(tiny_model, tokenizer, ids, plain(511))
