"""Tokenise "control codes + text + EOS" into training records and pad micro-batches.

Prefix and text are tokenised separately and concatenated, so the prefix tokens are exactly the prompt tokens
used at sampling time. Records are cut to `max_tokens`, a public setting never derived from the data; a record
that does not fit whole (EOS included) loses its tail *and* its EOS, since that text did not end there. All
records live in one flat tensor with offsets: 100K records are a few tensors, not 100K Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpsynth.errors import DpsynthError

IGNORE_INDEX = -100  # Hugging Face's label for "no loss here"; causal LMs shift labels internally
_CHUNK = 2048  # texts per tokenizer call: batched for speed, bounded so the Encoding objects stay small


@dataclass(frozen=True)
class EncodedRecord:
    """One training example: token ids and which positions count in the loss."""

    input_ids: torch.Tensor  # 1-D int64
    loss_mask: torch.Tensor  # 1-D bool, same length

    def __len__(self) -> int:
        return int(self.input_ids.numel())


class EncodedRecords(Sequence[EncodedRecord]):
    """All records of a dataset, stored flat; `records[i]` returns views, `lengths[i]` the token count."""

    def __init__(self, ids: torch.Tensor, loss_mask: torch.Tensor, offsets: torch.Tensor, *, max_tokens: int,
                 num_truncated: int) -> None:
        self.ids = ids
        self.loss_mask = loss_mask
        self.offsets = offsets  # len(records) + 1 int64 boundaries into ids
        self.max_tokens = max_tokens
        self.num_truncated = num_truncated  # records cut at max_tokens (their EOS dropped); an aggregate count

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"record index {index} out of range for {n} records")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return EncodedRecord(self.ids[start:end], self.loss_mask[start:end])

    def __iter__(self) -> Iterator[EncodedRecord]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> torch.Tensor:
        """Token count of every record (int64)."""
        return self.offsets[1:] - self.offsets[:-1]

    def summary(self) -> dict[str, int]:
        """Aggregate counts for the run report (no token values)."""
        return {"num_records": len(self), "num_truncated": self.num_truncated, "max_tokens": self.max_tokens}


def encode_records(tokenizer: Any, prefixes: Sequence[str], texts: Sequence[str], max_tokens: int,
                   loss_on_prefix: bool = True, add_bos: bool = False) -> EncodedRecords:
    """Record i = [BOS if add_bos] + tokens(prefixes[i]) + tokens(texts[i]) + [EOS], cut to `max_tokens`.

    The tokenizer adds no special tokens of its own. With `loss_on_prefix=False` the BOS and prefix positions are
    masked out of the loss (the text and EOS still count). Raises `DpsynthError` when the tokenizer has no EOS (or
    no BOS when asked for one) or when some prefix leaves no room for text within `max_tokens`.
    """
    if len(prefixes) != len(texts):
        raise ValueError(f"got {len(prefixes)} prefixes for {len(texts)} texts")
    if max_tokens < 2:
        raise DpsynthError(f"--max-tokens must be at least 2, got {max_tokens}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DpsynthError("the model's tokenizer has no end-of-sequence token; use a causal LM tokenizer with one")
    bos: list[int] = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise DpsynthError("a beginning-of-sequence token was asked for but the tokenizer has none")
        bos = [int(tokenizer.bos_token_id)]

    prefix_ids = {p: bos + list(ids) for p, ids in zip(*_unique_tokenised(tokenizer, prefixes))}
    longest = max((len(v) for v in prefix_ids.values()), default=0)
    if longest >= max_tokens:
        raise DpsynthError(f"the control codes take up to {longest} tokens, leaving no room for text within "
                           f"--max-tokens {max_tokens}; raise --max-tokens or use fewer or shorter label columns")

    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    prefix_lengths: list[int] = []
    truncated = 0
    for start in range(0, len(texts), _CHUNK):
        chunk = [str(t) for t in texts[start:start + _CHUNK]]
        flat: list[int] = []
        for prefix, ids in zip(prefixes[start:start + _CHUNK], _tokenise(tokenizer, chunk, max_length=max_tokens)):
            p = prefix_ids[prefix]
            record = p + ids
            record.append(eos)
            if len(record) > max_tokens:
                del record[max_tokens:]
                truncated += 1
            flat.extend(record)
            lengths.append(len(record))
            prefix_lengths.append(len(p))
        chunks.append(np.array(flat, dtype=np.int64))
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths_t, 0)
    ids_all = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, dtype=torch.long)
    if loss_on_prefix:
        mask_all = torch.ones(ids_all.numel(), dtype=torch.bool)
    else:  # position within its record >= that record's prefix length
        position = torch.arange(ids_all.numel()) - torch.repeat_interleave(offsets[:-1], lengths_t)
        mask_all = position >= torch.repeat_interleave(torch.tensor(prefix_lengths, dtype=torch.long), lengths_t)
    return EncodedRecords(ids_all, mask_all, offsets, max_tokens=max_tokens, num_truncated=truncated)


def _tokenise(tokenizer: Any, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids without special tokens. Cutting at max_length loses nothing: longer texts are truncated anyway."""
    if not texts:
        return []
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_attention_mask": False,
                              "return_token_type_ids": False}
    if max_length is not None and getattr(tokenizer, "truncation_side", "right") == "right":
        kwargs |= {"truncation": True, "max_length": max_length}
    return list(tokenizer(texts, **kwargs)["input_ids"])


def _unique_tokenised(tokenizer: Any, prefixes: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    unique = list(dict.fromkeys(prefixes))
    nonempty = [p for p in unique if p]
    ids = dict(zip(nonempty, _tokenise(tokenizer, nonempty)))
    return unique, [ids.get(p, []) for p in unique]


def collate(records: Sequence[EncodedRecord | torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest record.

    Returns `input_ids` and `attention_mask` (int64, 1 on real tokens) and `labels` = input_ids with -100 at
    padding and at loss-masked positions. A bare 1-D tensor counts as a record with loss on every token. Padding
    is located by the attention mask, never by comparing ids, so `pad_id == eos_id` keeps the EOS labels.
    """
    if not records:
        raise ValueError("cannot collate an empty micro-batch")
    ids_list = [r.input_ids if isinstance(r, EncodedRecord) else r for r in records]
    masks = [r.loss_mask if isinstance(r, EncodedRecord) else torch.ones(r.numel(), dtype=torch.bool)
             for r in records]
    width = max(int(t.numel()) for t in ids_list)
    batch = len(ids_list)
    input_ids = torch.full((batch, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, mask) in enumerate(zip(ids_list, masks)):
        n = int(ids.numel())
        input_ids[row, :n] = ids
        attention[row, :n] = 1
        labels[row, :n] = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
