"""The generation loop on the bundled SmolLM2-135M (grouped-query attention, tied embeddings, real vocabulary)."""

from __future__ import annotations

import pytest
import torch

from dpsynth.config import DecodingConfig
from dpsynth.models.loading import load_model
from dpsynth.sample.generate import encode_prompts, generate_texts, generate_token_ids

pytestmark = pytest.mark.real_model

PROMPTS = ["category: fresh | movie: Up\n\n", "stars: 5 | business: Bars\n\n", "category: rotten | movie: Cats\n\n"]


@pytest.fixture(scope="module")
def smollm2():
    """The bundled model is installed by `make setup` (like the demo data): failing to load it is a failure."""
    return load_model(None, dtype=torch.float32, device="cpu", padding_side="left")


def test_greedy_batch_matches_generate(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ids = encode_prompts(tok, PROMPTS)
    got = generate_token_ids(model, tok, ids, DecodingConfig(top_k=1, max_new_tokens=8), batch_size=3,
                             eos_token_id=smollm2.eos_id)
    for prompt_ids, out in zip(ids, got):
        mask = torch.ones(1, len(prompt_ids), dtype=torch.long)
        ref = model.generate(torch.tensor([prompt_ids]), attention_mask=mask, do_sample=False, max_new_tokens=8,
                             eos_token_id=smollm2.eos_id,
                             pad_token_id=smollm2.pad_id)
        assert out == ref[0, len(prompt_ids):].tolist()[: len(out)]


def test_sampled_texts_are_text(smollm2):
    texts = generate_texts(smollm2.model, smollm2.tokenizer, PROMPTS, DecodingConfig(max_new_tokens=16), batch_size=3,
                           seed=0, eos_token_id=smollm2.eos_id)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert not any(t.startswith("category:") for t in texts)
