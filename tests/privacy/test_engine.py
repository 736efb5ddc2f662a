"""The clipping engine against brute force: a Python loop over examples, each backpropagated alone.

If any handler computed a wrong norm (a missing cross term of tied embeddings, position ids broadcast over the
batch, a padding position leaking in) or a wrong clipped sum, these comparisons fail.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from dpsynth.errors import DpsynthError
from dpsynth.privacy.engine import ClippingEngine
from dpsynth.privacy.layers import UnsupportedLayerError
from dpsynth.privacy.loss import per_example_lm_loss
from tests.conftest import VOCAB, brute_force, make_batch, tiny_llama


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).float()




def engine_sum(model: nn.Module, batch: dict, clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    engine = ClippingEngine(model, clip).attach()
    b, t = batch["input_ids"].shape
    with engine.microbatch(b, t):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        losses = per_example_lm_loss(out.logits, batch["labels"])
    norms = engine.backward(losses)
    sums = {names[id(p)]: engine.clipped_sum(p).double() for p in engine.params}
    engine.detach()
    return norms.double(), sums


def assert_match(model: nn.Module, clip: float, batch: dict | None = None) -> None:
    batch = batch or make_batch()
    ref_norms, ref = brute_force(model, batch, clip)
    norms, got = engine_sum(model, batch, clip)
    torch.testing.assert_close(norms, ref_norms, rtol=2e-4, atol=1e-6)
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=2e-4, atol=2e-6, msg=f"clipped sum differs for {n}")
    for p in model.parameters():
        assert p.grad is None, "the engine must not leave unclipped gradients on the parameters"


@pytest.mark.parametrize("clip", [1e9, 0.05])  # no clipping active, and every example clipped
def test_llama_tied_embeddings_full_finetune(clip: float) -> None:
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_match(model, clip)


def test_llama_untied() -> None:
    assert_match(tiny_llama(tied=False), 0.05)


@pytest.mark.parametrize("clip", [1e9, 0.05])
def test_gpt2_conv1d_position_embeddings_tied(clip: float) -> None:
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_match(model, clip)


def test_norms_are_exact_not_just_sums() -> None:
    """With a huge clip bound the sum is the plain sum; the norms themselves must still be each example's."""
    model = tiny_llama()
    ref_norms, _ = brute_force(model, make_batch(), 1.0)
    norms, _ = engine_sum(model, make_batch(), 1.0)
    assert float(ref_norms.std()) > 0.01  # examples really differ, so a batch-level norm would not pass
    torch.testing.assert_close(norms, ref_norms, rtol=2e-4, atol=1e-6)


def test_lora_adapters_only() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                           "up_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero; give it values so the A gradients are non-trivial
            nn.init.normal_(p, std=0.1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert_match(model, 0.01)


def test_gpt2_lora_conv1d() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    assert_match(model, 0.01)


def tiny_opt() -> nn.Module:
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, ffn_dim=40, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=24, dropout=0.0)
    return OPTForCausalLM(cfg).float()


def test_opt_lora_on_its_folded_mlp() -> None:
    """OPT folds (batch, tokens) into rows before fc1/fc2 and its final LayerNorm: the engine unfolds them."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_opt(), LoraConfig(r=4, target_modules=["q_proj", "fc1", "fc2"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    assert_match(model, 0.01)
    for n, p in model.named_parameters():  # LayerNorms too: their inputs are folded as well
        p.requires_grad_("lora_" in n or "final_layer_norm" in n)
    assert_match(model, 0.01)


def test_a_layer_with_its_own_forward_is_refused() -> None:
    """OPT's positional embedding is called with the attention mask and looks up positions it computes itself:
    per-example formulas fed with its input would be wrong, so it is refused by name on its first call."""
    engine = ClippingEngine(tiny_opt(), 1.0).attach()
    batch = make_batch()
    refused = pytest.raises(UnsupportedLayerError,
                            match=r"embed_positions' \(OPTLearnedPositionalEmbedding\).*other than nn.Embedding's")
    with refused, engine.microbatch(*batch["input_ids"].shape):
        engine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_a_linear_subclass_computing_the_same_is_clipped() -> None:
    """Falcon's FalconLinear has its own forward but computes x·Wᵀ + b: accepted, and exact."""
    torch.manual_seed(0)
    model = FalconForCausalLM(FalconConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2,
                                           num_attention_heads=4, new_decoder_architecture=False, alibi=False,
                                           bias=True)).float()
    assert any(type(m).__name__ == "FalconLinear" for m in model.modules())
    assert_match(model, 0.05)


def test_partially_frozen_model() -> None:
    """Frozen embeddings (no gradient reaches the first trainable layer through a trainable input)."""
    model = tiny_llama(tied=False)
    model.model.embed_tokens.weight.requires_grad_(False)
    model.model.layers[0].requires_grad_(False)
    assert_match(model, 0.05)


def test_ghost_and_instantiation_agree() -> None:
    """Force each linear layer through both paths: the per-layer choice must not change the result."""
    model = tiny_llama(tied=False)
    batch = make_batch()
    _, ref = engine_sum(model, batch, 0.05)
    engine = ClippingEngine(model, 0.05).attach()
    for h in engine.handlers:
        if hasattr(h, "force_ghost"):
            h.force_ghost = h.ghost = not h.ghost
    b, t = batch["input_ids"].shape
    with engine.microbatch(b, t):
        losses = per_example_lm_loss(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, batch["labels"])
    engine.backward(losses)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in engine.params:
        torch.testing.assert_close(engine.clipped_sum(p).double(), ref[names[id(p)]], rtol=2e-4, atol=2e-6)
    engine.detach()


def test_all_ghost_layers_share_input_grams_correctly() -> None:
    """Every linear layer on the ghost path: q/k/v (and gate/up) share one input's Gram matrix, while o_proj reads a
    different tensor of the same shape — a cache keyed on anything less than the tensor itself would mix them up."""
    from dpsynth.privacy.layers import GramCache, LinearHandler

    model = tiny_llama(tied=False)
    batch = make_batch()
    ref_norms, ref = brute_force(model, batch, 0.05)
    engine = ClippingEngine(model, 0.05).attach()
    linear = [h for h in engine.handlers if isinstance(h, LinearHandler)]
    for h in linear:
        h.force_ghost = h.ghost = True
    built = []
    original = GramCache.gram

    def counting(self: GramCache, key: tuple, make) -> torch.Tensor:  # noqa: ANN001
        if key not in self._cache:
            built.append(key)
        return original(self, key, make)

    GramCache.gram = counting
    try:
        b, t = batch["input_ids"].shape
        with engine.microbatch(b, t):
            losses = per_example_lm_loss(model(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).logits, batch["labels"])
        norms = engine.backward(losses)
    finally:
        GramCache.gram = original
    # per block: the q/k/v input, o's input, the gate/up input, down's input; plus the LM head's input
    assert len(built) == 4 * 2 + 1 < len(linear)
    torch.testing.assert_close(norms.double(), ref_norms, rtol=2e-4, atol=1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in engine.params:
        torch.testing.assert_close(engine.clipped_sum(p).double(), ref[names[id(p)]], rtol=2e-4, atol=2e-6)
    engine.detach()


def test_micro_batches_accumulate_to_the_same_sum() -> None:
    """Splitting a logical batch into micro-batches must give the same clipped sum (accumulation in one step)."""
    model = tiny_llama()
    batch = make_batch()
    _, ref = brute_force(model, batch, 0.05)
    engine = ClippingEngine(model, 0.05).attach()
    for lo, hi in [(0, 2), (2, 5)]:
        part = {k: v[lo:hi] for k, v in batch.items()}
        with engine.microbatch(hi - lo, part["input_ids"].shape[1]):
            losses = per_example_lm_loss(model(input_ids=part["input_ids"],
                                               attention_mask=part["attention_mask"]).logits, part["labels"])
        engine.backward(losses)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in engine.params:
        torch.testing.assert_close(engine.clipped_sum(p).double(), ref[names[id(p)]], rtol=2e-4, atol=2e-6)
    assert engine.units_in_step == 5


class _Weird(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


def test_unclippable_layer_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(3, 3), _Weird())
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' \(_Weird\)") as err:
        ClippingEngine(model, 1.0)
    assert isinstance(err.value, DpsynthError)


def test_multihead_attention_is_refused() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(UnsupportedLayerError, match="MultiheadAttention"):
        ClippingEngine(model, 1.0)


class _SequenceFirst(nn.Module):
    """A block that runs its Linear on (tokens, batch, features), as sequence-first code does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.transpose(0, 1)).transpose(0, 1)


def test_a_layer_that_is_not_batch_first_is_refused() -> None:
    """Rows of a sequence-first input are tokens, not examples: clipping them would bound nothing per example."""
    engine = ClippingEngine(_SequenceFirst(), 1.0).attach()
    x = torch.randn(3, 5, 4)
    refused = pytest.raises(UnsupportedLayerError, match=r"layer 'proj'.*not batch-first: shape \(5, 3, 4\)")
    with refused, engine.microbatch(3, 5):
        engine.model(x)


def test_embedding_padding_idx_row_is_never_updated() -> None:
    """nn.Embedding(padding_idx=p) gives row p no gradient; the engine's norms and sums must agree even when the
    padding id also occurs inside real text."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=5, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    assert model.model.embed_tokens.padding_idx == 5
    batch = make_batch()
    assert (batch["input_ids"][batch["attention_mask"].bool()] == 5).any()
    assert_match(model, 0.05, batch)


@pytest.mark.parametrize("model_fn", [tiny_llama, tiny_gpt2])
def test_user_level_units_are_clipped_as_one(model_fn) -> None:
    """Rows 0,1 belong to user 0, row 2 to user 1, rows 3,4 to user 2 (not even contiguous in the batch order
    below): each user's *summed* gradient is clipped once, as user-level DP requires."""
    model = model_fn()
    batch = make_batch()
    groups = torch.tensor([0, 2, 1, 0, 2])
    clip = 0.05
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_row = []
    for i in range(5):
        n_tok = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i : i + 1, :n_tok]
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        per_example_lm_loss(out.logits, batch["labels"][i : i + 1, :n_tok]).sum().backward()
        per_row.append({n: p.grad.double().clone() for n, p in params.items()})
    model.zero_grad(set_to_none=True)
    ref = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    ref_norms = []
    for u in range(3):
        rows = [i for i in range(5) if int(groups[i]) == u]
        unit = {n: sum(per_row[i][n] for i in rows) for n in params}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in unit.values()))
        ref_norms.append(norm)
        for n in ref:
            ref[n] += unit[n] * min(1.0, clip / (float(norm) + 1e-6))

    engine = ClippingEngine(model, clip).attach()
    with engine.microbatch(5, batch["input_ids"].shape[1]):
        losses = per_example_lm_loss(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, batch["labels"])
    norms = engine.backward(losses, groups=groups)
    torch.testing.assert_close(norms.double(), torch.stack(ref_norms), rtol=2e-4, atol=1e-6)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in engine.params:
        torch.testing.assert_close(engine.clipped_sum(p).double(), ref[names[id(p)]], rtol=2e-4, atol=2e-6)
    assert engine.units_in_step == 3
    engine.detach()


def test_low_precision_inputs_are_converted_in_chunks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 activations/gradients: Gram matrices and the clipped product are float32 results of the bf16 values,
    the same whether converted whole or a few examples at a time (no B×T×vocab float32 copy)."""
    from dpsynth.privacy import layers

    g = torch.Generator().manual_seed(3)
    a = torch.randn(7, 5, 6, generator=g).bfloat16()
    out = torch.randn(7, 5, 11, generator=g).bfloat16()
    clip = torch.rand(7, generator=g)
    ref_gram = torch.einsum("btd,bsd->bts", out.double(), out.double())
    ref_sum = torch.einsum("b,btp,btd->pd", clip.double(), out.double(), a.double())
    for chunk in (1 << 24, 11 * 5, 1):  # whole batch, one example per chunk, smaller than one example
        monkeypatch.setattr(layers, "_CHUNK_ELEMENTS", chunk)
        gram = layers._gram(out)
        assert gram.dtype == torch.float32
        torch.testing.assert_close(gram.double(), ref_gram, rtol=1e-6, atol=1e-5)
        for x, y in ((a, out), (out, a)):  # either side may be the narrower one
            got = layers._clipped_product(x, y, clip)
            want = ref_sum if x is a else ref_sum.t()
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_engine_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CPU bf16 autocast, forcing one example per float32 chunk changes neither norms nor clipped sums."""
    from dpsynth.privacy import layers

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = tiny_llama()
        batch = make_batch()
        engine = ClippingEngine(model, 0.05).attach()
        b, t = batch["input_ids"].shape
        with engine.microbatch(b, t), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        norms = engine.backward(per_example_lm_loss(logits.float(), batch["labels"]))
        return norms, [engine.clipped_sum(p) for p in engine.params]

    norms, sums = run()
    monkeypatch.setattr(layers, "_CHUNK_ELEMENTS", 1)
    norms_chunked, sums_chunked = run()
    torch.testing.assert_close(norms_chunked, norms, rtol=1e-5, atol=1e-6)
    for x, y in zip(sums_chunked, sums, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_no_activation_outlives_the_backward_while_the_loss_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer keeps `losses` until its next micro-batch; autograd keeps the output hooks (and so the records)
    alive with it. Every record must be emptied after the clipped sum, or each layer's input and output gradient
    would stay in memory through the noise and the optimizer step."""
    from dpsynth.privacy import engine as engine_module
    from dpsynth.privacy.layers import _Record

    created: list[_Record] = []

    class Tracked(_Record):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(engine_module, "_Record", Tracked)
    model = tiny_llama()
    batch = make_batch()
    engine = ClippingEngine(model, 0.05).attach()
    b, t = batch["input_ids"].shape
    with engine.microbatch(b, t):
        losses = per_example_lm_loss(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, batch["labels"])
    engine.backward(losses)
    assert losses.grad_fn is not None  # the graph (and its hooks) is still referenced here
    assert len(created) > 10
    held = [r for r in created if r.inputs is not None or r.grad_output is not None]
    assert not held, f"{len(held)} of {len(created)} records still hold tensors after the step"
