"""Canary scoring against brute force (cached context = full forward passes), the training-format rank with ties,
membership-inference losses, the AUC's standard error, and the automatic canary repetitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.encode import collate, encode_records
from dpsynth.evaluate import audit_data, audit_scores
from dpsynth.models.tiny import make_byte_tokenizer, tiny_gpt2, tiny_llama


def _brute_nll(model: torch.nn.Module, context: list[int], cont: list[int]) -> float:
    ids = torch.tensor([context + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return -sum(logp[t - 1, ids[0, t]].item() for t in range(len(context), ids.shape[1]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cached_context_scoring_matches_full_forward_passes(kind: str) -> None:
    tok = make_byte_tokenizer()
    model = (tiny_llama if kind == "llama" else tiny_gpt2)(len(tok), seed=1)
    context = tok("sentiment: fresh\n\nYou can reach me on")["input_ids"]
    conts = [tok(s)["input_ids"] + [tok.eos_token_id] for s in (" 415-555-0134.", " 2.", " 999-000-1111 ext 7.")]
    expected = [_brute_nll(model, context, c) for c in conts]
    for batch in (1, 2, 3):  # padding to the longest continuation must not change any score
        got = audit_scores.continuation_nll(model, context, conts, batch_size=batch)
        np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_rank_uses_the_training_format_and_splits_ties() -> None:
    tok = make_byte_tokenizer()
    model = tiny_llama(len(tok), seed=2)
    ctrl = ControlCodes(["sentiment"]).prefix({"sentiment": "fresh"})
    secret, cands = "415-555-0134", ["415-555-0135", "200-111-2222", "999-999-9999"]
    rank, length = audit_scores.rank_in_training_format(model, tok, ctrl, "Call me on", secret, cands)
    # the same ranking from the full training records (control codes + text + EOS), scored by brute force
    full = audit_scores.training_format_ids(tok, ctrl, [f"Call me on {s}." for s in [secret, *cands]])
    assert full[0] == tok(ctrl + f"Call me on {secret}.")["input_ids"] + [tok.eos_token_id]
    assert length == len(full[0])
    start = len(tok(ctrl + "Call me on")["input_ids"])
    nll = [_brute_nll(model, f[:start], f[start:]) for f in full]
    assert rank == 1 + sum(n < nll[0] for n in nll[1:])

    class Flat(torch.nn.Module):  # every token equally likely: all same-length secrets tie
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: torch.Tensor, **_: object) -> object:
            logits = torch.zeros(*input_ids.shape, len(tok)) + 0 * self.w
            return type("Out", (), {"logits": logits, "past_key_values": None})()

    assert audit_scores.rank_in_training_format(Flat(), tok, ctrl, "Call me on", secret, cands)[0] == 2.5


def test_record_losses_are_the_training_loss_of_each_record() -> None:
    tok = make_byte_tokenizer()
    model = tiny_llama(len(tok), seed=3)
    prefixes, texts = ["a: x\n\n", "a: y\n\n", ""], ["short", "a somewhat longer text here", "mid text"]
    got = audit_scores.record_losses(model, tok, prefixes, texts, max_tokens=20, batch_size=2)
    records = encode_records(tok, prefixes, texts, max_tokens=20)
    for i, rec in enumerate(records):
        batch = collate([rec], pad_id=tok.pad_token_id)
        with torch.no_grad():
            want = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
        assert got[i] == pytest.approx(want, rel=1e-4)


def test_auc_standard_error_matches_the_exact_null_value() -> None:
    # Under no signal the Mann-Whitney AUC has variance (n + m + 1) / (12 n m); Hanley-McNeil agrees at 0.5
    assert audit_scores.auc_std_error(0.5, 50, 50) == pytest.approx(math.sqrt(101 / (12 * 50 * 50)), rel=1e-3)
    assert audit_scores.auc_std_error(1.0, 50, 50) == 0.0
    assert audit_scores.auc_std_error(0.7, 400, 400) < audit_scores.auc_std_error(0.7, 40, 40)


# ------------------------------------------------------------------------------------------------ defaults, config


def test_auto_repetitions_keep_canaries_a_small_share_of_the_data() -> None:
    assert audit_data.auto_repetitions(1_900_000, 5) == [1, 10, 100]  # the reference's Yelp scale
    assert audit_data.auto_repetitions(11_100, 5) == [1, 10, 100]  # 555 canary records = 5 %
    assert audit_data.auto_repetitions(11_099, 5) == [1, 10]
    assert audit_data.auto_repetitions(2_000, 5) == [1, 10]
    assert audit_data.auto_repetitions(500, 5) == [1]
    assert audit_data.auto_repetitions(10, 5) == [1]  # never fewer than one count
    assert audit_data.auto_repetitions(2_000, 1, max_share=0.1) == [1, 10, 100]
