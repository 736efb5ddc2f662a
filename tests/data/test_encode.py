"""encode_records / collate on a real fast byte_tokenizer (byte-level: one token per UTF-8 byte, built offline)."""

from __future__ import annotations

import time

import pytest
import torch

from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.encode import IGNORE_INDEX, EncodedRecord, collate, encode_records
from dpsynth.errors import DpsynthError
from tests.conftest import make_byte_tokenizer

EOS, PAD, BOS = 1, 0, 2


def _ids(byte_tokenizer, s: str) -> list[int]:
    return byte_tokenizer(s, add_special_tokens=False)["input_ids"]


def test_record_is_prefix_then_text_then_eos(byte_tokenizer):
    codes = ControlCodes(["sentiment"])
    prefix = codes.prefix({"sentiment": "fresh"})
    recs = encode_records(byte_tokenizer, [prefix], ["Good film."], max_tokens=64)
    rec = recs[0]
    assert rec.input_ids.dtype == torch.long and rec.input_ids.dim() == 1
    assert rec.input_ids.tolist() == _ids(byte_tokenizer, prefix) + _ids(byte_tokenizer, "Good film.") + [EOS]
    assert byte_tokenizer.decode(rec.input_ids[:-1]) == "sentiment: fresh\n\nGood film."
    assert rec.loss_mask.all() and recs.num_truncated == 0 and len(recs) == 1


def test_prefix_tokens_equal_the_sampling_prompt_tokens(byte_tokenizer):
    prefix = "a: x | b: y\n\n"
    rec = encode_records(byte_tokenizer, [prefix], ["zz"], max_tokens=64)[0]
    n = len(_ids(byte_tokenizer, prefix))
    assert rec.input_ids[:n].tolist() == byte_tokenizer(prefix, add_special_tokens=False)["input_ids"]


def test_truncation_drops_the_eos_and_is_counted(byte_tokenizer):
    prefix = "l: a\n\n"  # 6 bytes = 6 tokens
    texts = ["x" * 3, "y" * 4, "z" * 5, "w" * 50]  # 6+3+1=10 fits, 6+4+1=11 > 10, ...
    recs = encode_records(byte_tokenizer, [prefix] * 4, texts, max_tokens=10)
    assert recs.lengths.tolist() == [10, 10, 10, 10]
    assert recs[0].input_ids[-1].item() == EOS
    for i in (1, 2, 3):
        assert EOS not in recs[i].input_ids.tolist()
        assert recs[i].input_ids.tolist() == (_ids(byte_tokenizer, prefix) + _ids(byte_tokenizer, texts[i]))[:10]
    assert recs.num_truncated == 3 and recs.summary() == {"num_records": 4, "num_truncated": 3, "max_tokens": 10}


def test_exactly_full_text_without_room_for_eos_counts_as_truncated(byte_tokenizer):
    recs = encode_records(byte_tokenizer, [""], ["abcd"], max_tokens=4)
    assert recs[0].input_ids.tolist() == _ids(byte_tokenizer, "abcd") and recs.num_truncated == 1


def test_loss_mask_off_on_prefix_only(byte_tokenizer):
    recs = encode_records(byte_tokenizer, ["p: q\n\n", ""], ["hi", "hi"], max_tokens=32, loss_on_prefix=False)
    assert recs[0].loss_mask.tolist() == [False] * 6 + [True] * 3  # "hi" + EOS keep their loss
    assert recs[1].loss_mask.tolist() == [True] * 3


def test_no_bos_unless_asked(byte_tokenizer):
    plain = encode_records(byte_tokenizer, ["p\n\n"], ["t"], max_tokens=16)[0]
    assert BOS not in plain.input_ids.tolist()
    with_bos = encode_records(byte_tokenizer, ["p\n\n"], ["t"], max_tokens=16, add_bos=True, loss_on_prefix=False)[0]
    assert with_bos.input_ids.tolist() == [BOS] + plain.input_ids.tolist()
    assert with_bos.loss_mask.tolist() == [False] * 4 + [True] * 2


def test_prefix_that_fills_max_tokens_is_refused(byte_tokenizer):
    with pytest.raises(DpsynthError, match="--max-tokens 6"):
        encode_records(byte_tokenizer, ["long: prefix\n\n"], ["t"], max_tokens=6)


def test_tokenizer_without_eos_is_refused():
    tok = make_byte_tokenizer()
    tok.eos_token = None
    with pytest.raises(DpsynthError, match="end-of-sequence"):
        encode_records(tok, [""], ["t"], max_tokens=8)


def test_no_records(byte_tokenizer):
    recs = encode_records(byte_tokenizer, [], [], max_tokens=8, loss_on_prefix=False)
    assert len(recs) == 0 and recs.num_truncated == 0 and list(recs) == []


def test_lengths_must_match(byte_tokenizer):
    with pytest.raises(ValueError):
        encode_records(byte_tokenizer, ["a"], ["b", "c"], max_tokens=8)


def test_many_records_are_batched_and_fast(byte_tokenizer):
    n = 20_000
    codes = ControlCodes(["s"])
    prefixes = [codes.prefix({"s": "fresh" if i % 3 else "rotten"}) for i in range(n)]
    texts = [f"review number {i} " * (1 + i % 7) for i in range(n)]
    start = time.perf_counter()
    recs = encode_records(byte_tokenizer, prefixes, texts, max_tokens=48, loss_on_prefix=False)
    assert time.perf_counter() - start < 10.0
    assert len(recs) == n and int(recs.lengths.max()) <= 48
    for i in (0, 1, 2049, n - 1):  # across byte_tokenizer chunks
        want = (_ids(byte_tokenizer, prefixes[i]) + _ids(byte_tokenizer, texts[i]) + [EOS])[:48]
        assert recs[i].input_ids.tolist() == want
        n_prefix = len(prefixes[i].encode())
        assert recs[i].loss_mask.tolist() == [False] * n_prefix + [True] * (len(want) - n_prefix)
    expected_truncated = sum(len(p.encode()) + len(t.encode()) + 1 > 48 for p, t in zip(prefixes, texts))
    assert recs.num_truncated == expected_truncated
    assert len(recs[-2:]) == 2 and len(list(iter(recs))) == n


def test_collate_pads_right_and_masks_labels(byte_tokenizer):
    recs = encode_records(byte_tokenizer, ["a: b\n\n", "a: c\n\n"], ["long text", "x"], max_tokens=64,
                          loss_on_prefix=False)
    batch = collate([recs[0], recs[1]], pad_id=PAD)
    n0, n1 = len(recs[0]), len(recs[1])
    assert batch["input_ids"].shape == (2, n0) and n1 < n0
    assert batch["attention_mask"].tolist() == [[1] * n0, [1] * n1 + [0] * (n0 - n1)]
    assert batch["input_ids"][1, n1:].eq(PAD).all()
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 6 + recs[1].input_ids[6:].tolist() + \
        [IGNORE_INDEX] * (n0 - n1)
    assert batch["labels"][0, :6].eq(IGNORE_INDEX).all() and batch["labels"][0, -1].item() == EOS


def test_collate_with_pad_equal_to_eos_keeps_the_eos_label(byte_tokenizer):
    recs = encode_records(byte_tokenizer, ["", ""], ["abc", "a"], max_tokens=16)
    batch = collate(list(recs), pad_id=EOS)
    assert batch["input_ids"][1].tolist() == [*_ids(byte_tokenizer, "a"), EOS, EOS, EOS]
    assert batch["labels"][1].tolist() == [*_ids(byte_tokenizer, "a"), EOS, IGNORE_INDEX, IGNORE_INDEX]


def test_collate_accepts_bare_tensors_and_the_model_loss_ignores_padding(byte_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(byte_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=64)).eval()
    short = torch.tensor(_ids(byte_tokenizer, "hey") + [EOS])
    long = EncodedRecord(torch.tensor(_ids(byte_tokenizer, "a longer one") + [EOS]), torch.ones(13, dtype=torch.bool))
    alone = collate([short], pad_id=PAD)
    padded = collate([short, long], pad_id=PAD)
    assert alone["labels"].tolist() == [short.tolist()]
    with torch.no_grad():
        loss_alone = model(**alone).loss
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    # Recompute the short row's loss from the padded batch: padding must not change it.
    shift_logits, shift_labels = logits[0, :-1], padded["labels"][0, 1:]
    loss_padded = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss_alone, loss_padded, atol=1e-5)


def test_collate_empty_batch_is_an_error():
    with pytest.raises(ValueError):
        collate([], pad_id=0)
