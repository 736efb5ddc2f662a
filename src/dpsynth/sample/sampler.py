"""Sample a synthetic dataset: draw label combinations, prompt with their control codes, write text + labels.

Resumable by construction: the label draws are a deterministic function of (distribution, N, seed), records are
generated in fixed chunks whose seed depends only on (seed, chunk index), and every chunk is committed to the
output with its progress record (`SyntheticWriter`). A killed run therefore continues at the first missing
record, and with the same batch size produces exactly the file an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dpsynth.errors import DpsynthError
from dpsynth.sample.generate import (
    Backend,
    GenerationStats,
    auto_batch_size,
    encode_prompts,
    generate_texts,
    release_static_decoder,
)
from dpsynth.sample.labels import LabelDistribution
from dpsynth.sample.writer import SyntheticWriter, postprocess

PREFIX_SEPARATOR = " | "
PREFIX_END = "\n\n"
MIN_CHUNK_ROWS = 256


@dataclass
class DecodingConfig:
    """Sampling settings; the defaults are the reference recipe's (top-k 50, top-p 0.9, 128 new tokens)."""

    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128


@dataclass
class SampleReport:
    """What a `sample_synthetic` call did. Token and time figures cover this call only (not resumed rows)."""

    out_path: str
    requested: int
    rows_written: int
    resumed_rows: int
    generated_this_run: int
    dropped_empty: int
    dropped_duplicates: int
    seconds: float
    new_tokens: int
    batch_size: int
    backend: str
    label_source: str | None
    complete: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self.generated_this_run / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_s"] = round(self.tokens_per_s, 2)
        d["records_per_s"] = round(self.records_per_s, 3)
        return d


def build_prompt(labels: Mapping[str, Any], label_columns: Sequence[str]) -> str:
    """The control-code prefix used in training: `"col: value | col: value"` + a blank line ("" without labels)."""
    if not label_columns:
        return ""
    return PREFIX_SEPARATOR.join(f"{c}: {labels[c]}" for c in label_columns) + PREFIX_END


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 0x5A3D, chunk]).generate_state(1)[0])


def _fingerprint(num_samples: int, seed: int, label_columns: Sequence[str], text_column: str,
                 decoding: DecodingConfig, dist: LabelDistribution | None) -> str:
    """What must match for a resume to continue the same run (the label draws and decoding depend on it)."""
    payload = {
        "num_samples": num_samples, "seed": seed, "label_columns": list(label_columns), "text_column": text_column,
        "decoding": asdict(decoding),
        "labels": None if dist is None else [[c, float(p)] for c, p in zip(dist.combos, dist.probabilities)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _progress_bar(total: int, completed: int) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.1f} rec/s" if task.speed else "– rec/s")

    console = Console(stderr=True)
    # Redrawn bars only make sense on a terminal; in a log file they would repeat hundreds of times.
    bar = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    task = bar.add_task("sampling", total=total, completed=completed)
    return bar, task


def sample_synthetic(
    model: Any,
    tokenizer: Any,
    label_distribution: LabelDistribution | None,
    num_samples: int,
    out_path: str | Path,
    *,
    label_columns: Sequence[str],
    text_column: str = "text",
    decoding: DecodingConfig | None = None,
    seed: int = 0,
    batch_size: int | Literal["auto"] = "auto",
    resume: bool = True,
    progress: bool = True,
    drop_empty: bool = True,
    drop_duplicates: bool = False,
    chunk_size: int | None = None,
    prompt_encoder: Callable[[str], list[int]] | None = None,
    add_bos: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    backend: Backend = "auto",
    static_cache: bool | Literal["auto"] = "auto",
) -> SampleReport:
    """Generate `num_samples` records into `out_path` (.csv/.jsonl/.parquet): one text column plus the labels.

    Labels come from `label_distribution` (DP or declared public; see `dpsynth.sample.labels`), drawn in exact
    proportions; each record is the model's continuation of `build_prompt(labels)`. Empty texts (and, if asked,
    exact duplicate rows) are dropped as free post-processing, so `rows_written` can be below `num_samples`; the
    report counts what was dropped. `resume=True` continues an interrupted run of the same settings and refuses
    one with different settings; `resume=False` overwrites. Prefixes are encoded as training encodes them
    (`encode_prompts`: no special tokens, BOS first if `add_bos`); `prompt_encoder` overrides that if needed.
    `backend`, `static_cache` and `eos_token_id` (default: the tokenizer's; pass the id training appended) go to
    `generate_texts` (static cache + compiled step on CUDA by default).
    """
    decoding = decoding or DecodingConfig()
    label_columns = list(label_columns)
    if num_samples < 0:
        raise DpsynthError("The number of synthetic records must be ≥ 0.")
    if text_column in label_columns:
        raise DpsynthError(f"The text column '{text_column}' cannot also be a label column.")
    if label_columns and label_distribution is None:
        raise DpsynthError("Label columns were given but no label distribution; build one with dp_label_histogram "
                           "or public_label_distribution.")
    if label_distribution is not None and set(label_distribution.label_columns) != set(label_columns):
        raise DpsynthError(f"The label distribution is over {label_distribution.label_columns}, not the label "
                           f"columns {label_columns}; build it for the same columns.")
    dist = label_distribution if label_columns else None

    columns = [text_column, *label_columns]
    fingerprint = _fingerprint(num_samples, seed, label_columns, text_column, decoding, dist)
    writer = SyntheticWriter(out_path, columns, resume=resume)
    state = writer.state or {}
    if writer.rows_written and not state:
        raise DpsynthError(f"{Path(out_path).name} already holds rows that were not written by a resumable dpsynth "
                           "sampling run; choose another output path or overwrite it.")
    if state and state.get("fingerprint") != fingerprint:
        raise DpsynthError(f"{Path(out_path).name} is from a sampling run with different settings (sample count, "
                           "seed, decoding or labels); overwrite it or choose another output path.")
    draws_done = int(state.get("draws_done", 0))
    counts = {"dropped_empty": int(state.get("dropped_empty", 0)),
              "dropped_duplicates": int(state.get("dropped_duplicates", 0))}
    stats = GenerationStats()
    t0 = time.perf_counter()

    def report(complete: bool) -> SampleReport:
        return SampleReport(
            out_path=str(out_path), requested=num_samples, rows_written=writer.rows_written,
            resumed_rows=writer.resumed_rows, generated_this_run=stats.prompts, seconds=time.perf_counter() - t0,
            new_tokens=stats.new_tokens, batch_size=stats.batch_size, backend=stats.backend,
            label_source=None if dist is None else dist.source, complete=complete,
            notes=[] if dist is None else list(dist.notes), **counts)

    if writer.complete:
        return report(True)

    labels = dist.draw(num_samples, seed) if dist is not None else [{} for _ in range(num_samples)]
    prompts = [build_prompt(lab, label_columns) for lab in labels]
    distinct = sorted(set(prompts))
    if prompt_encoder is not None:
        encoded = {p: list(prompt_encoder(p)) for p in distinct}
    else:
        encoded = dict(zip(distinct, encode_prompts(tokenizer, distinct, add_bos=add_bos)))
    if batch_size == "auto" and distinct:
        batch_size = auto_batch_size(model, num_samples, max(len(v) for v in encoded.values()),
                                     decoding.max_new_tokens)
    batch_size = max(1, int(batch_size)) if batch_size != "auto" else 1
    chunk = chunk_size or batch_size * math.ceil(MIN_CHUNK_ROWS / batch_size)

    seen: set[tuple[str, ...]] | None = None
    if drop_duplicates:
        seen = set()
        postprocess(writer.read_rows(), text_column=text_column, drop_empty=False, drop_duplicates=True, seen=seen)

    bar = task = None
    if progress and draws_done < num_samples:
        from rich.errors import LiveError

        bar, task = _progress_bar(num_samples, draws_done)
        try:
            bar.start()
        except LiveError:  # the caller already shows a live display; sample without a bar of our own
            bar = task = None
    try:
        while draws_done < num_samples:
            c = draws_done // chunk
            start, stop = c * chunk, min(num_samples, (c + 1) * chunk)
            texts = generate_texts(model, tokenizer, [encoded[p] for p in prompts[start:stop]],  # type: ignore[misc]
                                   max_new_tokens=decoding.max_new_tokens, temperature=decoding.temperature,
                                   top_k=decoding.top_k, top_p=decoding.top_p,
                                   repetition_penalty=decoding.repetition_penalty, batch_size=batch_size,
                                   seed=_chunk_seed(seed, c), backend=backend, stats=stats,
                                   static_cache=static_cache, eos_token_id=eos_token_id,
                                   progress=(lambda n: bar.advance(task, n)) if bar is not None else None)
            skip = draws_done - start  # rows of this chunk already on disk (only if the chunk size changed)
            rows = [{text_column: t, **{k: lab[k] for k in label_columns}}
                    for t, lab in zip(texts[skip:], labels[draws_done:stop])]
            kept, pp = postprocess(rows, text_column=text_column, drop_empty=drop_empty,
                                   drop_duplicates=drop_duplicates, seen=seen)
            counts["dropped_empty"] += pp["dropped_empty"]
            counts["dropped_duplicates"] += pp["dropped_duplicates"]
            draws_done = stop
            writer.write(kept, state={"fingerprint": fingerprint, "draws_done": draws_done, **counts})
        writer.finish()
    finally:
        writer.close()
        release_static_decoder()
        if bar is not None:
            bar.stop()
    return report(True)
