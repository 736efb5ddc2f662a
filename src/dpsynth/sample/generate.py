"""Fast batched generation of continuations for control-code prompts.

Why not just `model.generate`: sampling 100K records is dominated by the decode loop, and for small models that
loop is bound by per-step overhead, not arithmetic. This module runs its own loop over the model's KV cache:

- prompts are bucketed by token length and content, so a batch is usually one control code: the prompt is
  prefilled once and its cache copied to every row, and little left padding is needed;
- top-k runs before top-p, so only the k best logits are sorted (HF's top-p sorts the whole vocabulary);
- finished rows are dropped from the batch (and the cache) once a quarter of it is done, so long-tailed lengths
  do not keep paying for rows that already hit EOS; the loop stops when every row has finished;
- on CUDA, a static KV cache and a `torch.compile(mode="reduce-overhead")` decode step (CUDA graphs) remove the
  launch overhead; any failure there falls back to the eager loop. The CPU path needs neither. A `Decoder` keeps
  its compiled step for its whole life (a sampling run calls it once per chunk; recompiling would cost tens of
  seconds each time) and frees it on `close()`.

Determinism: each batch draws from its own generator seeded from (seed, batch index), so the same prompts, seed
and batch size reproduce the same texts exactly (on the same device and kernels).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import DynamicCache, StaticCache

from dpsynth.config import DecodingConfig
from dpsynth.errors import DpsynthError
from dpsynth.models.loading import context_length

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    """Counters a caller can pass in to learn what a generation call cost."""

    prompts: int = 0
    new_tokens: int = 0  # tokens kept per sequence, EOS included
    decode_steps: int = 0  # forward passes over the batch after prefill
    seconds: float = 0.0
    batches: int = 0
    batch_size: int = 0
    backend: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Decoding:
    """The decoding settings with the tokens that end and pad a record."""

    settings: DecodingConfig
    eos_ids: tuple[int, ...]
    pad_id: int

    def __getattr__(self, name: str) -> Any:  # top_k, max_new_tokens, greedy, ... of the settings
        return getattr(self.settings, name)


# ---------------------------------------------------------------------------------------------- helpers
def _inner(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (for signature checks)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_names(model: Any) -> tuple[str, bool]:
    """The cache keyword (`cache` since transformers 5.x, `past_key_values` before) and whether logits_to_keep works."""
    params = inspect.signature(_inner(model).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _eos_ids(tokenizer: Any, model: Any, eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        raise DpsynthError("The tokenizer has no end-of-sequence token; pass eos_token_id to generate.")
    ids = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(int(i) for i in eos_token_id)
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
    """Token ids of each prompt exactly as training encodes a prefix: [BOS if add_bos] + tokens(prefix), with no
    special tokens added by the tokenizer (`dpsynth.data` tokenises prefix and text separately for this reason).

    An empty prompt (no control codes, no BOS) starts from EOS: the record separator, the only context a model
    trained on "text + EOS" records has for the start of a record.
    """
    if add_bos and tokenizer.bos_token_id is None:
        raise DpsynthError("add_bos was asked for but the tokenizer has no BOS token; sample without add_bos.")
    bos = [int(tokenizer.bos_token_id)] if add_bos else []
    cache: dict[str, list[int]] = {}
    out = []
    for p in prompts:
        if p not in cache:
            ids = list(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else []
            cache[p] = (bos + ids) or [int(tokenizer.eos_token_id)]
        out.append(cache[p])
    return out


def _batch_seed(seed: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, batch_index]).generate_state(1, np.uint64)[0]
               >> 1)


def filter_logits(scores: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k then top-p (nucleus) filtering, returning (candidate logits sorted descending, their token ids).

    Same rule as transformers' warpers: keep the k highest logits, then the smallest prefix whose probability mass
    reaches `top_p` (a token is kept if the mass *before* it is below `top_p`; the first is always kept). Dropped
    candidates get -inf.
    """
    k = scores.shape[-1] if top_k <= 0 else min(top_k, scores.shape[-1])
    vals, idx = torch.topk(scores, k, dim=-1)  # sorted descending
    if top_p < 1.0:
        probs = torch.softmax(vals, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        vals = vals.masked_fill(mass_before >= top_p, float("-inf"))
    return vals, idx


def _next_tokens(scores: torch.Tensor, cfg: _Decoding, gen: torch.Generator | None) -> torch.Tensor:
    if cfg.greedy:
        return scores.argmax(dim=-1)
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    vals, idx = filter_logits(scores, cfg.top_k, cfg.top_p)
    choice = torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=gen)
    return idx.gather(-1, choice).squeeze(-1)


def _penalise(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: divide positive / multiply negative logits of tokens already present."""
    return torch.where(seen, torch.where(scores > 0, scores / penalty, scores * penalty), scores)


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------------------------------------- eager loop
class _EagerDecoder:
    """Dynamic KV cache, deduplicated prefill, compaction of finished rows. Works on any device."""

    name = "hf-eager"

    def __init__(self, model: Any, cfg: _Decoding, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.cache_kw, self.has_keep = _forward_names(model)
        self.check_every = 1 if device.type == "cpu" else 8  # a finished-check syncs with the GPU

    def _new_cache(self) -> Any:
        return DynamicCache(config=self.model.config)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any, last_only: bool) -> Any:
        kwargs: dict[str, Any] = {self.cache_kw: cache, "use_cache": True}
        if last_only and self.has_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs).logits[:, -1, :].float()

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Run each distinct prompt once and copy its cache to every row that shares it."""
        uniq: dict[tuple[int, ...], int] = {}
        expand = [uniq.setdefault(tuple(p), len(uniq)) for p in prompts]
        width = max(len(p) for p in prompts)
        ids, mask = _left_pad(list(uniq), self.cfg.pad_id, width, self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._forward(ids, mask, pos, cache, last_only=True)
        if len(uniq) < len(prompts):
            index = torch.tensor(expand, device=self.device)
            cache.batch_select_indices(index)
            logits, mask, pos = logits[index], mask[index], pos[index]
        return logits, mask, pos[:, -1] + 1, cache

    def run(self, prompts: Sequence[Sequence[int]], gen: torch.Generator | None) -> tuple[list[list[int]], int]:
        cfg, dev = self.cfg, self.device
        batch = len(prompts)
        logits, mask, next_pos, cache = self.prefill(prompts)
        eos = torch.tensor(cfg.eos_ids, device=dev)
        out = torch.full((batch, cfg.max_new_tokens), cfg.pad_id, dtype=torch.long, device=dev)
        rows = torch.arange(batch, device=dev)  # original row of each live row
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        seen = None
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros((batch, logits.shape[-1]), dtype=torch.bool, device=dev)
            for i, p in enumerate(prompts):
                seen[i, torch.tensor(p, device=dev)] = True
        steps = 0
        for step in range(cfg.max_new_tokens):
            scores = logits
            if seen is not None:
                scores = _penalise(scores, seen, cfg.repetition_penalty)
            if step < cfg.min_new_tokens:
                scores = scores.index_fill(-1, eos, float("-inf"))
            tok = _next_tokens(scores, cfg, gen)
            out[rows, step] = tok
            done |= torch.isin(tok, eos)
            if step + 1 == cfg.max_new_tokens:
                break
            if (step + 1) % self.check_every == 0:
                alive = int((~done).sum())
                if alive == 0:
                    break
                if alive <= 0.75 * len(rows):
                    keep = (~done).nonzero().squeeze(-1)
                    cache.batch_select_indices(keep)
                    rows, done, tok, mask, next_pos = rows[keep], done[keep], tok[keep], mask[keep], next_pos[keep]
                    if seen is not None:
                        seen = seen[keep]
            if seen is not None:
                seen[torch.arange(len(tok), device=dev), tok] = True
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache, last_only=False)
            next_pos = next_pos + 1
            steps += 1
        return _cut_at_eos(out, cfg.eos_ids), steps


def _cut_at_eos(out: torch.Tensor, eos_ids: tuple[int, ...]) -> list[list[int]]:
    """Each row up to and including its first EOS (the EOS is kept here for counting; decoding drops it)."""
    result = []
    for row in out.tolist():
        for j, t in enumerate(row):
            if t in eos_ids:
                row = row[: j + 1]
                break
        result.append(row)
    return result


# ---------------------------------------------------------------------------------------------- static (CUDA) loop
class _StaticDecoder(_EagerDecoder):
    """Static KV cache with fixed shapes so the decode step can be compiled into CUDA graphs.

    Every batch is padded to the same number of rows and the cache to the same length, so one compiled graph
    serves the whole run. No compaction (it would change shapes); finished rows keep decoding until all are done.
    """

    name = "hf-static"

    def __init__(self, model: Any, cfg: _Decoding, device: torch.device, *, rows: int, prompt_len: int,
                 compile: bool) -> None:
        super().__init__(model, cfg, device)

        self.rows, self.max_len = rows, prompt_len + cfg.max_new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        step = self._decode_step
        if compile:
            step = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
        self.step = step

    def _decode_step(self, tok: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        kwargs = {self.cache_kw: self.cache, "use_cache": True}
        return self.model(input_ids=tok, attention_mask=mask, position_ids=pos, **kwargs).logits[:, -1, :].float()

    def run(self, prompts: Sequence[Sequence[int]], gen: torch.Generator | None) -> tuple[list[list[int]], int]:
        cfg, dev = self.cfg, self.device
        batch = len(prompts)
        if batch > self.rows or max(len(p) for p in prompts) + cfg.max_new_tokens > self.max_len:
            raise ValueError("batch larger than the static decoder was built for")
        padded = list(prompts) + [prompts[-1]] * (self.rows - batch)  # dummy rows keep the shape fixed
        width = max(len(p) for p in padded)
        ids, mask = _left_pad(padded, cfg.pad_id, width, dev)
        full = torch.zeros((self.rows, self.max_len), dtype=torch.long, device=dev)
        full[:, :width] = mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache.reset()
        kwargs = {self.cache_kw: self.cache, "use_cache": True}
        if self.has_keep:
            kwargs["logits_to_keep"] = 1
        logits = self.model(input_ids=ids, attention_mask=full, position_ids=pos, **kwargs).logits[:, -1, :].float()
        next_pos = pos[:, -1:] + 1
        eos = torch.tensor(cfg.eos_ids, device=dev)
        out = torch.full((self.rows, cfg.max_new_tokens), cfg.pad_id, dtype=torch.long, device=dev)
        done = torch.zeros(self.rows, dtype=torch.bool, device=dev)
        done[batch:] = True
        seen = None
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros((self.rows, logits.shape[-1]), dtype=torch.bool, device=dev)
            for i, p in enumerate(padded):
                seen[i, torch.tensor(p, device=dev)] = True
        row_index = torch.arange(self.rows, device=dev)
        steps = 0
        for step in range(cfg.max_new_tokens):
            scores = logits
            if seen is not None:
                scores = _penalise(scores, seen, cfg.repetition_penalty)
            if step < cfg.min_new_tokens:
                scores = scores.index_fill(-1, eos, float("-inf"))
            tok = _next_tokens(scores, cfg, gen)
            out[:, step] = tok
            done |= torch.isin(tok, eos)
            if step + 1 == cfg.max_new_tokens:
                break
            if (step + 1) % self.check_every == 0 and bool(done.all()):
                break
            if seen is not None:
                seen[row_index, tok] = True
            full[:, width + step] = 1
            logits = self.step(tok[:, None], full, next_pos).clone()  # graph outputs are reused by the next replay
            next_pos = next_pos + 1
            steps += 1
        return _cut_at_eos(out[:batch], cfg.eos_ids), steps


# ---------------------------------------------------------------------------------------------- public API
def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def auto_batch_size(model: Any, num_prompts: int, prompt_len: int, max_new_tokens: int) -> int:
    """Rows per batch: on CPU 64 (beyond it the matmuls are saturated and only latency grows, bench/RESULTS.md); on
    CUDA as many rows as fit in half the free memory (KV cache + sampling buffers), capped at 1024 where decoding
    stops being launch-bound for small models."""
    dev = _model_device(model)
    if dev.type != "cuda":
        return max(1, min(64, num_prompts))
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", 12)
    heads = getattr(cfg, "num_attention_heads", 12)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elt = next(model.parameters()).element_size()
    per_row = 2 * layers * kv_heads * head_dim * (prompt_len + max_new_tokens) * elt
    per_row += 6 * cfg.vocab_size * 4 + 16 * cfg.hidden_size * 4 * max(prompt_len, 1)
    free, _ = torch.cuda.mem_get_info(dev)
    rows = int(0.5 * free // per_row)
    return max(1, min(1024, rows, num_prompts))


def check_fits_context(model: Any, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse prompts + new tokens past the positions the model was built for (a learned-position model would
    crash mid-generation). The last token is never fed back, so prompt + new − 1 positions must fit."""
    context = context_length(model)
    if context is not None and longest_prompt + max_new_tokens - 1 > context:
        raise DpsynthError(f"prompts of up to {longest_prompt} tokens plus {max_new_tokens} new tokens would run "
                           f"past the {context} positions the model was built for; use --max-new-tokens "
                           f"{max(1, context - longest_prompt + 1)} or less")


class Decoder:
    """Continuations of token-id prompts for one model and one decoding setting.

    `batch_size` rows per batch ("auto": by device, `auto_batch_size`); `static_cache` "auto" uses a static cache
    and a compiled decode step on CUDA only. Keeps that compiled step between calls; `close()` frees it.
    """

    def __init__(self, model: Any, tokenizer: Any, decoding: DecodingConfig, *,
                 batch_size: int | Literal["auto"] = "auto", static_cache: bool | Literal["auto"] = "auto",
                 eos_token_id: int | Sequence[int] | None = None) -> None:
        eos_ids = _eos_ids(tokenizer, model, eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        self.model, self.tokenizer = model, tokenizer
        self.cfg = _Decoding(decoding, eos_ids, int(pad))
        self.batch_size = batch_size
        self.static_cache = static_cache
        self.device = _model_device(model)
        self._static: _StaticDecoder | None = None
        self._static_failed = False

    def token_ids(self, ids: list[list[int]], *, seed: int = 0, progress: Callable[[int], Any] | None = None,
                  stats: GenerationStats | None = None) -> list[list[int]]:
        """Generated ids per prompt (input order), each cut after its first EOS (EOS included if reached)."""
        stats = stats if stats is not None else GenerationStats()
        t0 = time.perf_counter()
        if not ids:
            return []
        check_fits_context(self.model, max(map(len, ids)), self.cfg.max_new_tokens)
        result = self._generate(ids, seed, progress, stats)
        stats.prompts += len(ids)
        stats.new_tokens += sum(len(r) for r in result)
        stats.seconds += time.perf_counter() - t0
        return result

    def texts(self, ids: list[list[int]], *, seed: int = 0, progress: Callable[[int], Any] | None = None,
              stats: GenerationStats | None = None) -> list[str]:
        """The generated text of each prompt: prompt and EOS left out, control characters removed, stripped."""
        return decode_continuations(self.tokenizer, self.token_ids(ids, seed=seed, progress=progress, stats=stats),
                                    self.cfg.eos_ids)

    def close(self) -> None:
        """Free the static KV cache and compiled step (returns GPU memory when sampling is over)."""
        self._static = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _loop(self, rows: int, max_prompt: int, num_prompts: int) -> tuple[_EagerDecoder, int]:
        """The decode loop for a call, and its batch size: the static one on CUDA (built once, its prompt room
        rounded up so that chunks share it), unless it failed before or the call is far smaller than its batch."""
        use_static = self.static_cache is True or (self.static_cache == "auto" and self.device.type == "cuda")
        if use_static and (self.static_cache is True or (num_prompts >= rows // 4 and not self._static_failed)):
            room = 32 * math.ceil(max_prompt / 32)
            try:
                if self._static is None or self._static.rows != rows or self._static.max_len < room + \
                        self.cfg.max_new_tokens:
                    self._static = _StaticDecoder(self.model, self.cfg, self.device, rows=rows, prompt_len=room,
                                                  compile=self.device.type == "cuda")
                return self._static, rows
            except Exception as e:  # pragma: no cover - depends on model/cache support
                log.warning("static KV cache unavailable (%s); using the dynamic cache", type(e).__name__)
        return _EagerDecoder(self.model, self.cfg, self.device), min(rows, num_prompts)

    def _generate(self, ids: list[list[int]], seed: int, progress: Callable[[int], Any] | None,
                  stats: GenerationStats) -> list[list[int]]:
        max_prompt = max(len(p) for p in ids)
        rows = (auto_batch_size(self.model, len(ids), max_prompt, self.cfg.max_new_tokens)
                if self.batch_size == "auto" else max(1, int(self.batch_size)))
        decoder, batch_size = self._loop(rows, max_prompt, len(ids))
        # Buckets: sort by length then content, so identical control codes share a batch and padding is minimal.
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), ids[i]))
        result: list[list[int]] = [[] for _ in ids]
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            with torch.inference_mode():
                for b, start in enumerate(range(0, len(order), batch_size)):
                    members = order[start:start + batch_size]
                    tokens, steps, decoder = self._batch(decoder, [ids[i] for i in members], _batch_seed(seed, b),
                                                         first=b == 0)
                    for i, t in zip(members, tokens):
                        result[i] = t
                    stats.decode_steps += steps
                    stats.batches += 1
                    if progress is not None:
                        progress(len(members))
        finally:
            if was_training:
                self.model.train()
        stats.backend, stats.batch_size = decoder.name, batch_size
        return result

    def _batch(self, decoder: _EagerDecoder, prompts: list[list[int]], seed: int,
               first: bool) -> tuple[list[list[int]], int, _EagerDecoder]:
        def gen() -> torch.Generator | None:
            return None if self.cfg.greedy else torch.Generator(device=self.device).manual_seed(seed)

        try:
            tokens, steps = decoder.run(prompts, gen())
        except Exception as e:
            if not (isinstance(decoder, _StaticDecoder) and self.static_cache == "auto" and first):
                raise
            log.warning("static/compiled decoding failed (%s); falling back to the dynamic cache", type(e).__name__)
            self._static_failed = True  # do not retry (and recompile) on every later call
            self.close()
            decoder = _EagerDecoder(self.model, self.cfg, self.device)
            tokens, steps = decoder.run(prompts, gen())
        return tokens, steps, decoder


def generate_token_ids(model: Any, tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
                       decoding: DecodingConfig | None = None, *, batch_size: int | Literal["auto"] = "auto",
                       seed: int = 0, eos_token_id: int | Sequence[int] | None = None,
                       progress: Callable[[int], Any] | None = None, static_cache: bool | Literal["auto"] = "auto",
                       stats: GenerationStats | None = None, add_bos: bool = False) -> list[list[int]]:
    """One call of a `Decoder`: prompts are strings (encoded as training encodes prefixes, `encode_prompts`) or
    id lists; the result is each prompt's generated ids, cut after its first EOS."""
    ids = ([list(map(int, p)) for p in prompts] if prompts and not isinstance(prompts[0], str)
           else encode_prompts(tokenizer, prompts, add_bos=add_bos))  # type: ignore[arg-type]
    decoder = Decoder(model, tokenizer, decoding or DecodingConfig(), batch_size=batch_size,
                      static_cache=static_cache, eos_token_id=eos_token_id)
    try:
        return decoder.token_ids(ids, seed=seed, progress=progress, stats=stats)
    finally:
        decoder.close()


# Control characters other than tab and newline (NUL, lone CR, ...) break CSV readers and carry no text.
_CONTROL = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def clean_text(text: str) -> str:
    """Normalise CRLF to LF, drop other control characters (tab and LF stay), strip surrounding whitespace."""
    return text.replace("\r\n", "\n").translate(_CONTROL).strip()


def decode_continuations(tokenizer: Any, token_ids: Sequence[Sequence[int]], eos_ids: Sequence[int]) -> list[str]:
    """Text of each continuation: EOS and special tokens dropped, control characters removed, whitespace stripped."""
    eos = set(eos_ids)
    cut = [[t for t in row if t not in eos] for row in token_ids]
    return [clean_text(t) for t in tokenizer.batch_decode(cut, skip_special_tokens=True)]


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
                   decoding: DecodingConfig | None = None, *, eos_token_id: int | Sequence[int] | None = None,
                   **kwargs: Any) -> list[str]:
    """`generate_token_ids` as text: the prompt (control codes) is not part of the output; each text ends before
    the first EOS and is stripped."""
    ids = generate_token_ids(model, tokenizer, prompts, decoding, eos_token_id=eos_token_id, **kwargs)
    return decode_continuations(tokenizer, ids, _eos_ids(tokenizer, model, eos_token_id))
