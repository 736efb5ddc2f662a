"""dpsynth.models: which causal LM is fine-tuned and how.

- `loading`: `load_model` (bundled SmolLM2 via a one-time fp32 cache, local folders, hub names) and `describe_model`.
- `lora`: `apply_lora`, `merge_and_save`, `trainable_parameters`.
- `tiny`: seeded tiny Llama/GPT-2 models and a byte tokenizer, for tests and fast end-to-end runs without downloads.

Submodules are imported explicitly (not re-exported here) so that importing `dpsynth` stays cheap.
"""
