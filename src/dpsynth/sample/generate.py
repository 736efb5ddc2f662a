"""Fast batched generation of continuations for control-code prompts.

Why not just `model.generate`: sampling 100K records is dominated by the decode loop, and for small models that
loop is bound by per-step overhead, not arithmetic. This module runs its own loop over the model's KV cache:

- prompts are bucketed by token length and content, so a batch is usually one control code: the prompt is
  prefilled once and its cache copied to every row, and little left padding is needed;
- top-k runs before top-p, so only the k best logits are sorted (HF's top-p sorts the whole vocabulary);
- finished rows are dropped from the batch (and the cache) once a quarter of it is done, so long-tailed lengths
  do not keep paying for rows that already hit EOS; the loop stops when every row has finished;
- on CUDA, a static KV cache and a `torch.compile(mode="reduce-overhead")` decode step (CUDA graphs) remove the
  launch overhead; any failure there falls back to the eager loop. The CPU path needs neither.

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

from dpsynth.errors import DpsynthError
from dpsynth.models.loading import context_length

log = logging.getLogger(__name__)

Backend = Literal["auto", "hf", "vllm"]


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
    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    eos_ids: tuple[int, ...]
    pad_id: int

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0


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
        from transformers import DynamicCache

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
        from transformers import StaticCache

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


# One compiled decoder is kept between calls (a sampling run calls once per chunk; recompiling would cost tens of
# seconds each time). Keyed on everything that fixes its shapes; prompt room is rounded up so chunks share it.
_STATIC: dict[str, Any] = {}


def _static_decoder(model: Any, cfg: _Decoding, device: torch.device, rows: int, prompt_len: int) -> _StaticDecoder:
    room = 32 * math.ceil(prompt_len / 32)
    key = (id(model), rows, room, cfg, device)
    if _STATIC.get("key") != key or _STATIC.get("model") is not model:
        failed = _STATIC.get("failed", False)
        release_static_decoder()
        _STATIC["failed"] = failed
        _STATIC.update(key=key, model=model, decoder=_StaticDecoder(model, cfg, device, rows=rows, prompt_len=room,
                                                                     compile=device.type == "cuda"))
    return _STATIC["decoder"]


def release_static_decoder() -> None:
    """Free the kept static KV cache and compiled step (call when sampling is over to return GPU memory)."""
    _STATIC.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- vLLM (optional)
def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return torch.cuda.is_available()


def _generate_vllm(model: Any, ids: list[list[int]], cfg: _Decoding, seed: int) -> list[list[int]]:  # pragma: no cover
    """vLLM backend: `model` must be a path (or a model saved at `config._name_or_path`) of a merged checkpoint.

    Kept minimal and isolated: it needs a GPU and the `vllm` extra, and cannot be tested on CPU.
    """
    from vllm import LLM, SamplingParams

    path = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path or hasattr(model, "get_base_model"):
        raise DpsynthError("The vLLM backend needs a saved, merged model folder; save the model and pass its path.")
    llm = LLM(model=str(path), seed=seed)
    params = [SamplingParams(n=1, temperature=0.0 if cfg.greedy else cfg.temperature, top_k=cfg.top_k or -1,
                             top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, max_tokens=cfg.max_new_tokens,
                             min_tokens=cfg.min_new_tokens, stop_token_ids=list(cfg.eos_ids),
                             seed=_batch_seed(seed, i)) for i in range(len(ids))]
    outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


# ---------------------------------------------------------------------------------------------- public API
def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def auto_batch_size(model: Any, num_prompts: int, prompt_len: int, max_new_tokens: int) -> int:
    """Rows per batch: on CPU 64 (SmolLM2-135M on 2 cores: 16 → 32 → 64 rows gave 58 → 101 → 118 new tokens/s in
    fp32; beyond that the matmuls are saturated and only latency grows); on CUDA as many rows as fit in half the free
    memory (KV cache + sampling buffers), capped at 1024 where decoding stops being launch-bound for small models."""
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


def generate_token_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    progress: Callable[[int], Any] | None = None,
    backend: Backend = "auto",
    static_cache: bool | Literal["auto"] = "auto",
    stats: GenerationStats | None = None,
    add_bos: bool = False,
) -> list[list[int]]:
    """Generated token ids per prompt (in input order), each cut after its first EOS (EOS included if reached).

    Prompts are strings (encoded with `encode_prompts(tokenizer, prompts, add_bos=add_bos)`) or already-encoded id
    lists. See `generate_texts`.
    """
    if max_new_tokens < 1 or min_new_tokens < 0 or min_new_tokens > max_new_tokens:
        raise DpsynthError("Need 1 ≤ max_new_tokens and 0 ≤ min_new_tokens ≤ max_new_tokens.")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
        raise DpsynthError("Decoding needs temperature ≥ 0, 0 < top_p ≤ 1, top_k ≥ 0 and repetition_penalty > 0.")
    stats = stats if stats is not None else GenerationStats()
    t0 = time.perf_counter()
    ids = ([list(map(int, p)) for p in prompts] if prompts and not isinstance(prompts[0], str)
           else encode_prompts(tokenizer, prompts, add_bos=add_bos))  # type: ignore[arg-type]
    if not ids:
        return []
    if not isinstance(model, str):
        check_fits_context(model, max(map(len, ids)), max_new_tokens)
    eos_ids = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    cfg = _Decoding(max_new_tokens, min_new_tokens, float(temperature), int(top_k), float(top_p),
                    float(repetition_penalty), eos_ids, int(pad))
    if backend == "vllm" or (backend == "auto" and isinstance(model, str) and _vllm_available()):
        result = _generate_vllm(model, ids, cfg, seed)
        stats.backend, stats.batches, stats.batch_size = "vllm", 1, len(ids)
    else:
        if isinstance(model, str):
            raise DpsynthError("A model path needs the vLLM backend; load the model with transformers for 'hf'.")
        result = _generate_hf(model, ids, cfg, batch_size, seed, progress, static_cache, stats)
    stats.prompts += len(ids)
    stats.new_tokens += sum(len(r) for r in result)
    stats.seconds += time.perf_counter() - t0
    return result


def _generate_hf(model: Any, ids: list[list[int]], cfg: _Decoding, batch_size: int | str, seed: int,
                 progress: Callable[[int], Any] | None, static_cache: bool | str, stats: GenerationStats,
                 ) -> list[list[int]]:
    device = _model_device(model)
    max_prompt = max(len(p) for p in ids)
    if batch_size == "auto":
        batch_size = auto_batch_size(model, len(ids), max_prompt, cfg.max_new_tokens)
    requested = max(1, int(batch_size))
    batch_size = min(requested, len(ids))
    # Buckets: sort by length then content, so identical control codes share a batch and padding is minimal.
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), ids[i]))
    decoder: _EagerDecoder = _EagerDecoder(model, cfg, device)
    use_static = static_cache is True or (static_cache == "auto" and device.type == "cuda")
    # A call with far fewer prompts than the static batch (the last chunk of a run) is cheaper eagerly.
    if use_static and (static_cache is True or (len(ids) >= requested // 4 and not _STATIC.get("failed"))):
        try:
            decoder = _static_decoder(model, cfg, device, requested, max_prompt)
            batch_size = requested
        except Exception as e:  # pragma: no cover - depends on model/cache support
            log.warning("static KV cache unavailable (%s); using the dynamic cache", type(e).__name__)
    result: list[list[int]] = [[] for _ in ids]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(order), batch_size)):
                members = order[start:start + batch_size]
                gen = None
                if not cfg.greedy:
                    gen = torch.Generator(device=device)
                    gen.manual_seed(_batch_seed(seed, b))
                batch_prompts = [ids[i] for i in members]
                try:
                    tokens, steps = decoder.run(batch_prompts, gen)
                except Exception as e:
                    if isinstance(decoder, _StaticDecoder) and static_cache == "auto" and b == 0:
                        log.warning("static/compiled decoding failed (%s); falling back to the dynamic cache",
                                    type(e).__name__)
                        release_static_decoder()
                        _STATIC["failed"] = True  # do not retry (and recompile) on every later call
                        decoder = _EagerDecoder(model, cfg, device)
                        if gen is not None:
                            gen.manual_seed(_batch_seed(seed, b))
                        tokens, steps = decoder.run(batch_prompts, gen)
                    else:
                        raise
                for i, t in zip(members, tokens):
                    result[i] = t
                stats.decode_steps += steps
                stats.batches += 1
                if progress is not None:
                    progress(len(members))
    finally:
        if was_training:
            model.train()
    stats.backend, stats.batch_size = decoder.name, batch_size
    return result


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


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    progress: Callable[[int], Any] | None = None,
    backend: Backend = "auto",
    static_cache: bool | Literal["auto"] = "auto",
    stats: GenerationStats | None = None,
    add_bos: bool = False,
) -> list[str]:
    """Sample one continuation per prompt and return only the generated text, in input order.

    The prompt (control codes) is not part of the output; each text ends before the first EOS and is stripped.
    `top_k=0` disables top-k, `top_p=1` disables nucleus filtering, `top_k=1` or `temperature=0` is greedy.
    `progress(n)` is called after each batch with the number of prompts it finished. `backend="auto"` uses vLLM
    only for a model given as a path with vLLM and CUDA present; otherwise the transformers model loop ("hf").
    `static_cache="auto"` uses a static cache with a compiled decode step on CUDA only. Same seed, prompts and
    batch size give the same texts. `stats`, if given, is updated with counts and timings. `add_bos` must match
    training (`dpsynth.data.encode_records(add_bos=...)`).
    """
    ids = generate_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, batch_size=batch_size, seed=seed,
                             eos_token_id=eos_token_id, progress=progress, backend=backend,
                             static_cache=static_cache, stats=stats, add_bos=add_bos)
    return decode_continuations(tokenizer, ids, _eos_ids(tokenizer, model, eos_token_id))
