"""How a trained model treats planted secrets and training records: the measurements behind `dpsynth audit`.

Likelihoods are computed in the exact training format: control codes of the canary's record, then the canary
text, then EOS, tokenised as `dpsynth.data.encode.encode_records` does. The shared context (control codes +
"My phone number is") is run through the model once and its key/value cache reused for every candidate, which
halves the cost of ranking thousands of candidates.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dpsynth.data.encode import IGNORE_INDEX, collate, encode_records
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.canaries import common_prefix
from dpsynth.privacy.loss import per_example_lm_loss


def continuation_nll(model: Any, context_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
                     batch_size: int = 64) -> np.ndarray:
    """Total negative log-likelihood (nats) of each token continuation after one shared context.

    The context goes through the model once; its key/value cache is copied for every batch of continuations, so
    only the continuation tokens are computed per candidate. Continuations are right-padded (padding comes after
    the real tokens, so causal attention never sees it).
    """
    if not context_ids:
        raise ValueError("the shared context must hold at least one token")
    if any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation must hold at least one token")
    device = next(model.parameters()).device
    out = np.empty(len(continuations), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ctx = torch.tensor([list(context_ids)], dtype=torch.long, device=device)
            cache_kw = _cache_keyword(model)
            first = model(input_ids=ctx, use_cache=True)
            past = getattr(first, "cache", None)
            if past is None:
                past = getattr(first, "past_key_values", None)
            first_logp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
            for b in range(0, len(continuations), batch_size):
                chunk = continuations[b:b + batch_size]
                width = max(map(len, chunk))
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, seq in enumerate(chunk):
                    ids[r, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
                    mask[r, :len(seq)] = 1
                ids, mask = ids.to(device), mask.to(device)
                if past is not None:
                    cache = copy.deepcopy(past)
                    cache.batch_repeat_interleave(len(chunk))
                    attention = torch.cat([torch.ones((len(chunk), ctx.shape[1]), dtype=torch.long, device=device),
                                           mask], dim=1)
                    logits = model(input_ids=ids, attention_mask=attention, use_cache=True,
                                   **{cache_kw: cache}).logits.float()
                else:  # a model without a cache: run context + continuation in full
                    full = torch.cat([ctx.expand(len(chunk), -1), ids], dim=1)
                    attention = torch.cat([torch.ones_like(ctx).expand(len(chunk), -1), mask], dim=1)
                    logits = model(input_ids=full, attention_mask=attention).logits[:, ctx.shape[1]:].float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
                nll = -(tok.sum(1) + first_logp[ids[:, 0]])
                out[b:b + len(chunk)] = nll.double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _cache_keyword(model: Any) -> str:
    """`cache` since transformers 5.x (`past_key_values` is deprecated there), `past_key_values` before."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def training_format_ids(tokenizer: Any, control_prefix: str, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of "control codes + text + EOS" exactly as training builds them (no truncation)."""
    records = encode_records(tokenizer, [control_prefix] * len(texts), list(texts), max_tokens=1 << 30)
    return [r.input_ids.tolist() for r in records]


def rank_in_training_format(model: Any, tokenizer: Any, control_prefix: str, text_prefix: str, secret: str,
                            candidates: Sequence[str], *, batch_size: int = 64) -> tuple[float, int]:
    """(rank, tokens of the true record) of the secret among itself and `candidates`, in the training format.

    Rank 1 = most likely; ties are split evenly (expected rank under random tie-breaking), as in
    `canaries.rank_of_secret`, so a model that scores everything alike gets ≈ N/2, not a falsely alarming 1.
    """
    others = [c for c in candidates if c != secret]
    if not others:
        raise DpsynthError("ranking a canary needs at least one candidate different from its secret")
    seqs = training_format_ids(tokenizer, control_prefix, [f"{text_prefix} {s}." for s in [secret, *others]])
    shared = min(common_prefix(seqs[0], s) for s in seqs[1:])
    if shared == 0:
        raise DpsynthError("the canary candidates share no leading token with the secret; cannot rank them")
    nll = continuation_nll(model, seqs[0][:shared], [s[shared:] for s in seqs], batch_size=batch_size)
    true, rest = nll[0], nll[1:]
    tol = 1e-5 * max(1.0, abs(true))  # batch composition moves float32 sums by ~1e-6 relative
    lower = int((rest < true - tol).sum())
    ties = int((np.abs(rest - true) <= tol).sum())
    return 1.0 + lower + ties / 2.0, len(seqs[0])


def record_losses(model: Any, tokenizer: Any, prefixes: Sequence[str], texts: Sequence[str], *, max_tokens: int,
                  batch_size: int = 16) -> np.ndarray:
    """Mean next-token loss of each record in the training format (control codes + text + EOS, cut to max_tokens).

    This is what DP-SGD minimised for that record, hence the natural signal for a loss-threshold membership test.
    """
    records = encode_records(tokenizer, list(prefixes), list(texts), max_tokens=max_tokens)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = np.argsort(records.lengths.numpy(), kind="stable")
    out = np.full(len(records), np.nan)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([records[int(i)] for i in idx], pad_id=int(pad))
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
                labels = batch["labels"].to(device)
                loss = per_example_lm_loss(logits, labels)  # exactly the loss training minimised
                count = (labels[:, 1:] != IGNORE_INDEX).sum(1)
                out[idx] = torch.where(count > 0, loss, torch.full_like(loss, float("nan"))).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def auc_std_error(auc: float, num_pos: int, num_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC: tells whether 0.55 is a signal or the sample size."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (num_pos - 1) * (q1 - auc * auc) + (num_neg - 1) * (q2 - auc * auc)) / (num_pos * num_neg)
    return float(math.sqrt(max(var, 0.0)))
