"""The pre-flight check: can the clipping engine clip this model exactly? Asked before a run writes or pays for
anything.

One engine pass on three dummy examples (token ids, no data), then each example's gradient — parameter by
parameter — and its norm compared with plain autograd on that example alone. The engine's formulas hold for layers
that compute what their class says on rows that belong to one example. A layer it cannot clip is refused by name
when it attaches; one that breaks an assumption silently — rows of several examples mixed (a time-major fold looks
like OPT's batch-major one), a custom forward — shows here. The middle example has every label masked: its true
gradient is exactly zero, so any gradient of another example attributed to it shows, however small the layer's
share of the norm. LoRA B matrices (zero at the start) are randomised for the check so the A matrices are
exercised too. Weights, random state and training mode are restored; no gradient remains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dpsynth.data.encode import IGNORE_INDEX
from dpsynth.errors import DpsynthError, first_line
from dpsynth.privacy.engine import ClippingEngine
from dpsynth.privacy.loss import per_example_lm_loss, training_forward_kwargs

_BATCH, _MASKED = 3, 1


def check_clippable(model: nn.Module, device: torch.device, *, seq_len: int = 6) -> None:
    """Raise DpsynthError, naming the layer, if the engine's per-example gradients of `model` are not exact."""
    try:
        with _restored(model, device):
            ids, labels = _dummy_batch(model, device, seq_len)
            engine = ClippingEngine(model, 1.0).attach()
            try:
                with engine.microbatch(_BATCH, seq_len):
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   **training_forward_kwargs(model)).logits
                    norms, _ = engine.backward_norms(per_example_lm_loss(logits, labels))
            finally:
                engine.detach()  # the layers keep their records for row_gradient
            try:
                _compare_rows(model, engine, norms, ids, labels, device)
            finally:
                engine.release()
                model.zero_grad(set_to_none=True)
    except DpsynthError:
        raise
    except Exception as exc:  # a model whose training pass fails: one line, before anything is written
        raise DpsynthError(f"a test training pass of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{first_line(exc)}); this model cannot be trained with DP here — try --finetune lora "
                           "or another model") from exc


def _dummy_batch(model: nn.Module, device: torch.device, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(_BATCH * seq_len, device=device).view(_BATCH, seq_len) * 7919 + 11) % vocab
    labels = ids.clone()
    labels[_MASKED] = IGNORE_INDEX
    return ids, labels


def _compare_rows(model: nn.Module, engine: ClippingEngine, norms: torch.Tensor, ids: torch.Tensor,
                  labels: torch.Tensor, device: torch.device) -> None:
    """Each example's engine gradient and norm against autograd on that example alone."""
    names = {id(p): n for n, p in model.named_parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    scale = 0.0
    for i in (0, 2, _MASKED):  # an unmasked example first: it sets the scale of "zero"
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]),
                    **training_forward_kwargs(model)).logits
        per_example_lm_loss(out, labels[i : i + 1]).sum().backward()
        got = engine.row_gradient(i, device)
        direct_sq = 0.0
        for p in trained:
            want = (p.grad if p.grad is not None else torch.zeros_like(p)).float()
            have = got.get(p, torch.zeros_like(want))
            scale = max(scale, float(want.abs().max()))
            direct_sq += float(want.double().pow(2).sum())
            if not torch.allclose(have, want, rtol=5e-3, atol=1e-5 * scale + 1e-12):
                raise DpsynthError(
                    f"dpsynth cannot clip {type(model).__name__} correctly: on a test example the engine's gradient "
                    f"of '{names[id(p)]}' differs from a direct computation (by up to "
                    f"{float((have - want).abs().max()):.3g}), so that layer mixes examples or computes something "
                    "other than its class; fine-tune with LoRA (other --lora-targets) or use another model.")
        if not math.isclose(float(norms[i]), math.sqrt(direct_sq), rel_tol=5e-3, abs_tol=1e-5 * scale):
            raise DpsynthError(
                f"dpsynth cannot clip {type(model).__name__} correctly: a test example's gradient norm is "
                f"{float(norms[i]):.4g} by the engine and {math.sqrt(direct_sq):.4g} directly; fine-tune with LoRA "
                "(other --lora-targets) or use another model.")


@contextmanager
def _restored(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode (no dropout: the batched pass and the one-example passes must compute the same function), random
    LoRA B matrices, torch's random state — all put back afterwards."""
    was_training = model.training
    model.eval()
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if p.requires_grad and "lora_B" in n and not p.any():
                        saved[n] = p.detach().clone()
                        p.normal_(std=1.0 / max(1, p.shape[-1]))
            yield
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
        model.train(was_training)
