"""LoRA: only adapters train, targets are found generically, and merged folders reproduce the adapter model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpsynth.errors import DpsynthError
from dpsynth.models.loading import load_model
from dpsynth.models.lora import apply_lora, default_target_modules, merge_and_save, trainable_parameters
from dpsynth.models.tiny import make_byte_tokenizer, tiny_gpt2, tiny_llama

IDS = torch.tensor([[1, 5, 9, 200, 17, 3], [250, 4, 4, 8, 100, 2]])
BUILDERS = {"llama": lambda: tiny_llama(258), "gpt2": lambda: tiny_gpt2(258)}


def _randomise_adapters(model) -> None:
    """peft starts B at zero (adapter = identity); give it weights so merging has something to get right."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)


def test_default_targets_are_the_block_projections() -> None:
    assert default_target_modules(tiny_llama(258)) == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"]
    assert default_target_modules(tiny_gpt2(258)) == ["c_attn", "c_proj", "c_fc"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_only_adapters_are_trainable(kind: str) -> None:
    base = BUILDERS[kind]()
    n_base = sum(p.numel() for p in base.parameters())
    torch.manual_seed(0)
    model = apply_lora(base, r=4, alpha=8)
    trainable = trainable_parameters(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n, _ in trainable)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in trainable}
    # Every targeted projection in every layer got an A and a B; nothing else (embeddings, head) did.
    leaves = {"llama": 7, "gpt2": 4}[kind]  # GPT-2's attn.c_proj and mlp.c_proj are two modules per layer
    assert len(trainable) == 2 * leaves * 2
    assert sum(p.numel() for p in model.parameters()) > n_base
    if kind == "gpt2":
        assert model.peft_config["default"].fan_in_fan_out is True
    # A training step moves only the adapters.
    opt = torch.optim.SGD([p for _, p in trainable], lr=0.1)
    _randomise_adapters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(input_ids=IDS, labels=IDS).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {n for n, _ in trainable}


def test_dropout_is_passed_through_and_explicit_targets_are_checked() -> None:
    model = apply_lora(tiny_llama(258), r=2, dropout=0.1, target_modules=["q_proj", "v_proj"])
    cfg = model.peft_config["default"]
    assert cfg.lora_dropout == 0.1 and set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert len(trainable_parameters(model)) == 2 * 2 * 2
    with pytest.raises(DpsynthError, match="c_attn do not exist"):
        apply_lora(tiny_llama(258), target_modules=["c_attn"])
    with pytest.raises(DpsynthError, match="v_prj do not exist.*available projections: q_proj"):
        apply_lora(tiny_llama(258), target_modules=["q_proj", "v_prj"])  # one typo is not silently dropped
    with pytest.raises(ValueError, match="already has adapters"):
        apply_lora(model)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_and_save_reproduces_the_adapter_model(tmp_path, kind: str) -> None:
    torch.manual_seed(1)
    model = apply_lora(BUILDERS[kind](), r=4, alpha=8)
    _randomise_adapters(model)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        base_only = model.get_base_model()
    out = merge_and_save(model, tmp_path / "merged", tokenizer=make_byte_tokenizer())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = reloaded(input_ids=IDS).logits
        assert torch.allclose(got, expected, atol=1e-5)
        # The caller's adapter model is unchanged and still gives the same output.
        assert torch.allclose(model(input_ids=IDS).logits, expected)
    assert any("lora" in n for n, _ in base_only.named_parameters())
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert reloaded.get_input_embeddings().weight is reloaded.get_output_embeddings().weight
    # The folder is a complete model for load_model, and saving again over it works.
    assert load_model(out).eos_id == 256
    merge_and_save(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
