"""Per-example language-modelling loss: the unit the privacy engine clips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpsynth.data.encode import IGNORE_INDEX


def per_example_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each example over its own unmasked tokens, shape (B,).

    Each example's loss is averaged over its own tokens, not the batch's, so that an example's gradient does not
    depend on which other examples share its micro-batch (that would break per-example clipping). `labels` follow
    the Hugging Face convention: aligned with the inputs, -100 where no loss is taken; shifted here.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    tok = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(1).clamp_min(1)
    return tok.sum(1) / counts


def training_forward_kwargs(model: nn.Module) -> dict[str, object]:
    """Training never decodes: no KV cache (less memory; some models' cached eval path is not differentiable)."""
    return {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}
