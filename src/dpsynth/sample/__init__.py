"""dpsynth.sample: label distributions for conditional sampling, fast batched generation, resumable output.

- `labels`: `dp_label_histogram` (Gaussian mechanism on the joint label counts), `public_label_distribution`,
  `LabelDistribution.draw` (exact proportions, seeded order).
- `generate`: `generate_texts` / `generate_token_ids` (own KV-cache loop; optional vLLM backend).
- `writer`: `SyntheticWriter` (crash-safe CSV/JSONL/Parquet), `postprocess`.
- `sampler`: `sample_synthetic`, `DecodingConfig`, `SampleReport`, `build_prompt`.

Names are imported lazily so that `import dpsynth.sample` does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LabelDistribution": "labels", "dp_label_histogram": "labels", "public_label_distribution": "labels",
    "GenerationStats": "generate", "generate_texts": "generate", "generate_token_ids": "generate",
    "encode_prompts": "generate",
    "SyntheticWriter": "writer", "postprocess": "writer",
    "DecodingConfig": "sampler", "SampleReport": "sampler", "build_prompt": "sampler", "sample_synthetic": "sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"dpsynth.sample.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dpsynth.sample' has no attribute {name!r}")
