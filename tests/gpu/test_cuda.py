"""The CUDA code paths the CPU suite cannot reach, each checked against a reference (run by bench/gpu/run.sh).

- The clipping engine's per-example norms and clipped sums on the GPU equal a brute-force loop over examples
  (fp32, TF32 off): Llama with tied embeddings, GPT-2 (Conv1D, position embeddings), LoRA adapters; under bf16
  autocast (the GPU default) they stay within a few percent.
- Greedy decoding through the static KV cache and the compiled decode step (CUDA graphs) gives the eager loop's
  tokens and `model.generate`'s, without a silent fall-back to the eager loop; seeded sampling is reproducible.
- `dpsynth.commands.run.run` end to end on a tiny model on CUDA with DP (ε = 4, LoRA, bf16).

Every test is skipped where torch sees no CUDA device (the CPU machines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from dpsynth.config import DecodingConfig
from dpsynth.privacy.engine import ClippingEngine
from dpsynth.privacy.loss import per_example_lm_loss
from dpsynth.runtime.device import autocast
from dpsynth.sample.generate import Decoder, GenerationStats, encode_prompts, generate_token_ids
from tests.conftest import VOCAB, brute_force, make_batch, make_bpe_tokenizer, make_model, sentiment_values, tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
PROMPTS = ["category: fresh | movie: Up\n\n", "stars: 5\n\n", "x\n\n",
           "category: rotten | movie: a much longer title than the rest\n\n", "category: fresh | movie: Up\n\n",
           "stars: 1 | business: Bars\n\n", "category: fresh\n\n"]


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """Exact fp32 matrix products, so that fp32 comparisons can be tight; restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).float()


def tiny_lora() -> nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero; give it values so the A gradients are non-trivial
            nn.init.normal_(p, std=0.1)
    return model


def engine_sum(model: nn.Module, batch: dict, clip: float,
               precision: str = "fp32") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example norms and clipped sums from the engine: one forward, one backward."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    engine = ClippingEngine(model, clip).attach()
    b, t = batch["input_ids"].shape
    try:
        with engine.microbatch(b, t), autocast(CUDA, precision):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            losses = per_example_lm_loss(out.logits, batch["labels"])
        norms = engine.backward(losses)
        sums = {names[id(p)]: engine.clipped_sum(p).detach().clone() for p in engine.params}
    finally:
        engine.detach()
    return norms.detach(), sums


def _cuda_batch() -> dict[str, torch.Tensor]:
    return {k: v.to(CUDA) for k, v in make_batch().items()}


@pytest.mark.parametrize(("build", "clip"), [(tiny_llama, 0.05), (tiny_llama, 1e9), (tiny_gpt2, 0.05),
                                             (tiny_lora, 0.01)], ids=["llama_tied", "llama_noclip", "gpt2", "lora"])
def test_engine_matches_brute_force_fp32(build, clip: float) -> None:
    model = build().to(CUDA)
    batch = _cuda_batch()
    ref_norms, ref = brute_force(model, batch, clip)
    norms, got = engine_sum(model, batch, clip)
    assert got.keys() == ref.keys()
    assert all(t.device.type == "cuda" for t in got.values()), "the clipped sums must stay on the GPU"
    torch.testing.assert_close(norms.double(), ref_norms.double(), rtol=2e-4, atol=1e-6)
    for n in ref:
        torch.testing.assert_close(got[n].double(), ref[n], rtol=2e-4, atol=2e-6, msg=f"clipped sum differs for {n}")


def test_engine_under_bf16_autocast_is_close() -> None:
    """bf16 keeps 8 mantissa bits (~0.4 % a rounding): a few percent over a tiny model's gradients is expected."""
    model = tiny_llama().to(CUDA)
    batch = _cuda_batch()
    ref_norms, ref = brute_force(model, batch, 0.05)
    norms, got = engine_sum(model, batch, 0.05, precision="bf16")
    assert all(bool(torch.isfinite(g).all()) for g in got.values())
    assert _rel(norms, ref_norms) < 0.05
    assert max(_rel(got[n], ref[n]) for n in ref) < 0.10


@pytest.fixture(scope="module")
def tok_model():
    tok = make_bpe_tokenizer()
    return tok, make_model(tok, init_range=0.5).to(CUDA)


def _greedy(n: int) -> DecodingConfig:
    return DecodingConfig(top_k=1, max_new_tokens=n, min_new_tokens=0)


def test_static_compiled_greedy_equals_eager_and_generate(tok_model) -> None:
    tok, model = tok_model
    eager_stats, static_stats, auto_stats = GenerationStats(), GenerationStats(), GenerationStats()
    eager = generate_token_ids(model, tok, PROMPTS, _greedy(12), batch_size=4, static_cache=False, stats=eager_stats)
    # True: the static cache and compiled step, errors raised (no fall-back); "auto" is what users get on CUDA.
    static = generate_token_ids(model, tok, PROMPTS, _greedy(12), batch_size=4, static_cache=True,
                                stats=static_stats)
    auto = generate_token_ids(model, tok, PROMPTS, _greedy(12), batch_size=4, static_cache="auto", stats=auto_stats)
    assert (eager_stats.backend, static_stats.backend) == ("hf-eager", "hf-static")
    assert auto_stats.backend == "hf-static", "'auto' fell back to the eager loop on CUDA"
    assert static == eager and auto == eager
    with torch.inference_mode():
        for prompt, ids, got in zip(PROMPTS, encode_prompts(tok, PROMPTS), eager):
            x = torch.tensor([ids], device=CUDA)
            ref = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            assert got == ref[0, x.shape[1]:].tolist(), prompt


def test_seeded_sampling_is_reproducible_on_the_static_path(tok_model) -> None:
    """One Decoder, as the sampler uses it: the compiled step is built once and replayed across calls."""
    tok, model = tok_model
    decoder = Decoder(model, tok, DecodingConfig(top_k=50, top_p=0.9, max_new_tokens=16), batch_size=8,
                      static_cache=True)
    ids = encode_prompts(tok, PROMPTS * 3)
    stats = GenerationStats()
    try:
        a = decoder.token_ids(ids, seed=7, stats=stats)
        b = decoder.token_ids(ids, seed=7)
        c = decoder.token_ids(ids, seed=8)
    finally:
        decoder.close()
    assert stats.backend == "hf-static"
    assert a == b
    assert a != c


def test_dp_run_end_to_end_on_cuda(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    from dpsynth.commands.run import run
    from dpsynth.config import RunConfig

    out = tmp_path / "run"
    result = run(RunConfig(data=reviews_csv, label_columns=["sentiment"], model=str(tiny_model_dir), out=out,
                           epsilon=4.0, epochs=1.0, batch_size=16, max_tokens=32, num_samples=4, max_new_tokens=4,
                           label_values=sentiment_values(tmp_path), device="cuda", precision="bf16"))
    ledger = json.loads(result.privacy_path.read_text())
    assert [m["name"] for m in ledger["mechanisms"]] == ["dp-sgd", "gaussian"]
    assert math.isfinite(result.epsilon) and result.epsilon <= 4.0 + 1e-6
    record = json.loads(result.run_path.read_text())
    assert record["device"].startswith("cuda") and record["precision"] == "bf16"
    synth = pd.read_csv(result.synthetic_path)
    assert 0 < len(synth) <= 4 and set(synth["sentiment"]) <= {"fresh", "rotten"}
