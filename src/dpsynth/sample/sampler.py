"""Sample a synthetic dataset: draw label combinations, prompt with their control codes, write text + labels.

Resumable by construction: the label draws are a deterministic function of (distribution, N, seed), records are
generated in fixed chunks whose seed depends only on (seed, chunk index, top-up round), and every chunk is
committed to the output with its progress record (`SyntheticWriter`). A killed run therefore continues at the
first missing record, and with the same batch size produces exactly the file an uninterrupted run would have.

Under torchrun (`dist_ctx` with several ranks) the same chunks are split across ranks and merged by rank 0 in
chunk order; because chunks never depend on the world size, the merged file is the one a single process writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
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
from dpsynth.sample.sharded import (
    all_gather,
    check_same_on_all_ranks,
    gather_to_main,
    parts_dir,
    read_part,
    share_from_main,
    write_part,
)
from dpsynth.sample.writer import SyntheticWriter, drop_reasons
from dpsynth.train.distributed import DistContext

PREFIX_SEPARATOR = " | "
PREFIX_END = "\n\n"
MIN_CHUNK_ROWS = 256


class SamplingSettingsChanged(DpsynthError):
    """The output holds a resumable sampling run of other settings (a caller may choose to start it over)."""


@dataclass
class DecodingConfig:
    """Sampling settings; the defaults are the reference recipe's (top-k 50, top-p 0.9, 128 new tokens).

    `min_new_tokens=1` bars end-of-sequence as the first token. Why: a record that ends at once is empty and would
    be dropped and redrawn in a top-up round, extra generation for nothing (2 in 300 with the demo's model).
    Barring EOS at the first step and renormalising is exactly re-drawing that token until it is not EOS, i.e. the
    model's distribution given a non-empty record — what dropping the empty ones keeps — at no extra generation.
    0 restores plain sampling.
    """

    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise DpsynthError(f"--min-new-tokens ({self.min_new_tokens}) must be between 0 and --max-new-tokens "
                               f"({self.max_new_tokens})")


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
    replaced: int = 0  # rows written in top-up rounds, in place of dropped ones (see _Committer)
    topup_rounds: int = 0
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


def _chunk_seed(seed: int, chunk: int, round_: int = 0) -> int:
    """The seed of one chunk; top-up rounds (see `_Committer`) get their own, so a redrawn row is a new sample."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, 0x5A3D, chunk] + ([round_] if round_ else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _fingerprint(num_samples: int, seed: int, label_columns: Sequence[str], text_column: str,
                 decoding: DecodingConfig, dist: LabelDistribution | None, model_id: str | None = None) -> str:
    """What must match for a resume to continue the same run (the label draws and decoding depend on it, the
    texts on the model: `model_id` keeps a file sampled from an earlier model from being "resumed")."""
    decoding_fields = asdict(decoding)
    if decoding_fields["min_new_tokens"] == 0:  # as files from before the setting existed were sampled
        del decoding_fields["min_new_tokens"]
    payload = {
        "num_samples": num_samples, "seed": seed, "label_columns": list(label_columns), "text_column": text_column,
        "decoding": decoding_fields,
        "labels": None if dist is None else [[c, float(p)] for c, p in zip(dist.combos, dist.probabilities)],
    }
    if model_id is not None:
        payload["model"] = model_id
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


def _resumable_state(writer: SyntheticWriter, out_path: str | Path, fingerprint: str) -> dict[str, Any]:
    """The progress state of a resumable output of these settings; refuses a foreign file or other settings."""
    state = writer.state or {}
    if writer.rows_written and not state:
        raise DpsynthError(f"{Path(out_path).name} already holds rows that were not written by a resumable dpsynth "
                           "sampling run; choose another output path or overwrite it.")
    if state and state.get("fingerprint") != fingerprint:
        raise SamplingSettingsChanged(f"{Path(out_path).name} is from a sampling run with different settings "
                                      "(sample count, seed, decoding, labels or model); pass --overwrite to replace "
                                      "it, or choose another output path.")
    return state


def _plan_prompts(dist: LabelDistribution | None, num_samples: int, seed: int, label_columns: list[str],
                  tokenizer: Any, prompt_encoder: Callable[[str], list[int]] | None, add_bos: bool,
                  ) -> tuple[list[dict[str, Any]], list[str], dict[str, list[int]]]:
    """The seeded label draws, their prompts, and each distinct prompt's token ids (deterministic in the seed)."""
    labels = dist.draw(num_samples, seed) if dist is not None else [{} for _ in range(num_samples)]
    prompts = [build_prompt(lab, label_columns) for lab in labels]
    distinct = sorted(set(prompts))
    if prompt_encoder is not None:
        encoded = {p: list(prompt_encoder(p)) for p in distinct}
    else:
        encoded = dict(zip(distinct, encode_prompts(tokenizer, distinct, add_bos=add_bos)))
    return labels, prompts, encoded


def _resolve_batch_size(model: Any, batch_size: int | Literal["auto"], num_samples: int,
                        encoded: Mapping[str, list[int]], decoding: DecodingConfig) -> int:
    if batch_size == "auto" and encoded:
        batch_size = auto_batch_size(model, num_samples, max(len(v) for v in encoded.values()),
                                     decoding.max_new_tokens)
    return max(1, int(batch_size)) if batch_size != "auto" else 1


def _chunk_rows(batch_size: int, chunk_size: int | None) -> int:
    """Rows per chunk: a function of the batch size only (never of the world size), so chunk boundaries, chunk
    seeds and hence the records are the same however many processes share the work."""
    return chunk_size or batch_size * math.ceil(MIN_CHUNK_ROWS / batch_size)


@dataclass
class _Generator:
    """One chunk's generation call, with everything but the chunk fixed for the run."""

    model: Any
    tokenizer: Any
    decoding: DecodingConfig
    batch_size: int
    seed: int
    backend: Backend
    static_cache: bool | Literal["auto"]
    eos_token_id: int | Sequence[int] | None
    stats: GenerationStats

    def __call__(self, chunk: int, ids: list[list[int]], progress: Callable[[int], Any] | None,
                 round_: int = 0) -> list[str]:
        d = self.decoding
        return generate_texts(self.model, self.tokenizer, ids,  # type: ignore[arg-type]
                              max_new_tokens=d.max_new_tokens, min_new_tokens=d.min_new_tokens,
                              temperature=d.temperature, top_k=d.top_k,
                              top_p=d.top_p, repetition_penalty=d.repetition_penalty, batch_size=self.batch_size,
                              seed=_chunk_seed(self.seed, chunk, round_), backend=self.backend, stats=self.stats,
                              static_cache=self.static_cache, eos_token_id=self.eos_token_id, progress=progress)


MAX_TOPUP_ROUNDS = 5


@dataclass
class _Committer:
    """Appends chunks to the output in chunk order, post-processing them as one pass over the run would, and
    replaces what post-processing drops.

    Round 0 generates one record per label draw. A row dropped as empty or as a duplicate leaves its label draw
    in `redo`; when a round ends, the next (top-up) round generates those draws again, with chunk seeds of its
    own, until every draw has a row, a round keeps none of its rows (e.g. greedy decoding repeating itself), or
    `MAX_TOPUP_ROUNDS` rounds were added. Redrawing a dropped row with the same labels keeps the label mix exact
    and is still post-processing (rejection sampling from the model given a non-empty, new record): no privacy
    cost. The round, its draws and the redo list live in the output's progress state, so a killed run resumes
    mid-round like any other.
    """

    writer: SyntheticWriter
    fingerprint: str
    labels: list[dict[str, Any]]
    label_columns: list[str]
    text_column: str
    drop_empty: bool
    drop_duplicates: bool
    state: dict[str, Any]
    counts: dict[str, int]
    seen: set[tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        self.round = int(self.state.get("round", 0))
        self.members: list[int] | None = list(self.state["members"]) if self.round else None  # None: all draws
        self.draws_done = int(self.state.get("draws_done", 0))
        self.redo: list[int] = [int(i) for i in self.state.get("redo", [])]
        self.kept_this_round = int(self.state.get("kept_this_round", 0))
        self.notes: list[str] = []
        if self.state and "round" not in self.state and \
                self.counts["dropped_empty"] + self.counts["dropped_duplicates"]:
            self.notes.append("rows dropped before this dpsynth version resumed the file are not redrawn (their "
                              "label draws were not recorded)")
        if self.drop_duplicates:  # duplicates of rows already in a resumed file count too
            self.seen = set()
            try:
                rows = self.writer.read_rows()
            except (ValueError, csv.Error) as e:  # JSONDecodeError is a ValueError
                raise DpsynthError(f"{self.writer.path.name} cannot be read back to resume it ({type(e).__name__}: "
                                   "its rows were changed after they were written); pass --overwrite to sample it "
                                   "again, or choose another output path.") from None
            drop_reasons(rows, text_column=self.text_column, drop_empty=False, drop_duplicates=True, seen=self.seen)

    @property
    def round_size(self) -> int:
        return len(self.labels) if self.members is None else len(self.members)

    def draw(self, k: int) -> int:
        """The label draw behind the round's k-th record."""
        return k if self.members is None else self.members[k]

    def commit(self, texts: Sequence[str], start: int, stop: int) -> None:
        skip = self.draws_done - start  # rows of this chunk already on disk (only if the chunk size changed)
        draws = [self.draw(k) for k in range(self.draws_done, stop)]
        rows = [{self.text_column: t, **{c: self.labels[d][c] for c in self.label_columns}}
                for t, d in zip(texts[skip:], draws)]
        reasons = drop_reasons(rows, text_column=self.text_column, drop_empty=self.drop_empty,
                               drop_duplicates=self.drop_duplicates, seen=self.seen)
        kept = [row for row, why in zip(rows, reasons) if why is None]
        self.redo += [d for d, why in zip(draws, reasons) if why is not None]
        self.counts["dropped_empty"] += reasons.count("empty")
        self.counts["dropped_duplicates"] += reasons.count("duplicate")
        self.draws_done = stop
        self.kept_this_round += len(kept)
        if self.round:
            self.counts["replaced"] += len(kept)
        self._save(kept)

    def next_round(self) -> bool:
        """At the end of a round: start a top-up round for its dropped rows (True), or end the run (False)."""
        useful = self.round == 0 or self.kept_this_round > 0
        if not self.redo or not useful or self.round >= MAX_TOPUP_ROUNDS:
            return False
        self.round, self.members, self.redo = self.round + 1, self.redo, []
        self.draws_done = self.kept_this_round = 0
        self.counts["topup_rounds"] = self.round
        self._save([])
        return True

    def _save(self, rows: list[dict[str, Any]]) -> None:
        state: dict[str, Any] = {"fingerprint": self.fingerprint, "round": self.round, "draws_done": self.draws_done,
                                 "redo": self.redo, "kept_this_round": self.kept_this_round, **self.counts}
        if self.members is not None:
            state["members"] = self.members
        self.writer.write(rows, state=state)


def _counts(state: Mapping[str, Any]) -> dict[str, int]:
    """The post-processing counts so far, from an output's progress state."""
    return {k: int(state.get(k, 0)) for k in ("dropped_empty", "dropped_duplicates", "replaced", "topup_rounds")}


def _start_bar(progress: bool, total: int, completed: int) -> tuple[Any, Any]:
    if not progress or completed >= total:
        return None, None
    from rich.errors import LiveError

    bar, task = _progress_bar(total, completed)
    try:
        bar.start()
    except LiveError:  # the caller already shows a live display; sample without a bar of our own
        return None, None
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
    dist_ctx: DistContext | None = None,
    model_id: str | None = None,
) -> SampleReport:
    """Generate `num_samples` records into `out_path` (.csv/.jsonl/.parquet): one text column plus the labels.

    Labels come from `label_distribution` (DP or declared public; see `dpsynth.sample.labels`), drawn in exact
    proportions; each record is the model's continuation of `build_prompt(labels)`. Empty texts (and, if asked,
    exact duplicate rows) are dropped as free post-processing and redrawn with the same labels in top-up rounds
    (`_Committer`), so `rows_written` is below `num_samples` only when those rounds stop short; the report counts
    what was dropped and replaced. `resume=True` continues an interrupted run of the same settings and refuses
    one with different settings; `resume=False` overwrites. Prefixes are encoded as training encodes them
    (`encode_prompts`: no special tokens, BOS first if `add_bos`); `prompt_encoder` overrides that if needed.
    `backend`, `static_cache` and `eos_token_id` (default: the tokenizer's; pass the id training appended) go to
    `generate_texts` (static cache + compiled step on CUDA by default).

    With a `dist_ctx` of several ranks (torchrun), every rank must call this with the same arguments and the same
    weights: the chunks are split across ranks and rank 0 merges them into the same file one process would write
    (see `_sample_sharded`). Every rank gets the same report.
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
    fingerprint = _fingerprint(num_samples, seed, label_columns, text_column, decoding, dist, model_id)
    # Finished chunks left by an interrupted sharded run are reused even by a single process.
    if (dist_ctx is not None and dist_ctx.enabled) or parts_dir(out_path).is_dir():
        return _sample_sharded(
            dist_ctx or DistContext(), model, tokenizer, dist, num_samples, out_path, columns=columns,
            fingerprint=fingerprint, label_columns=label_columns, text_column=text_column, decoding=decoding,
            seed=seed, batch_size=batch_size, resume=resume, progress=progress, drop_empty=drop_empty,
            drop_duplicates=drop_duplicates, chunk_size=chunk_size, prompt_encoder=prompt_encoder, add_bos=add_bos,
            eos_token_id=eos_token_id, backend=backend, static_cache=static_cache)

    writer = SyntheticWriter(out_path, columns, resume=resume)
    state = _resumable_state(writer, out_path, fingerprint)
    counts = _counts(state)
    stats = GenerationStats()
    t0 = time.perf_counter()

    def report(complete: bool) -> SampleReport:
        return SampleReport(
            out_path=str(out_path), requested=num_samples, rows_written=writer.rows_written,
            resumed_rows=writer.resumed_rows, generated_this_run=stats.prompts, seconds=time.perf_counter() - t0,
            new_tokens=stats.new_tokens, batch_size=stats.batch_size, backend=stats.backend,
            label_source=None if dist is None else dist.source, complete=complete,
            notes=([] if dist is None else list(dist.notes)) + (committer.notes if committer else []), **counts)

    committer: _Committer | None = None

    if writer.complete:
        return report(True)

    labels, prompts, encoded = _plan_prompts(dist, num_samples, seed, label_columns, tokenizer, prompt_encoder,
                                             add_bos)
    batch = _resolve_batch_size(model, batch_size, num_samples, encoded, decoding)
    chunk = _chunk_rows(batch, chunk_size)
    generate = _Generator(model, tokenizer, decoding, batch, seed, backend, static_cache, eos_token_id, stats)
    committer = _Committer(writer, fingerprint, labels, label_columns, text_column, drop_empty, drop_duplicates,
                           state, counts)

    # In units of records to generate: the requested ones, then each top-up round's on top.
    bar, task = _start_bar(progress, num_samples, num_samples - (committer.round_size - committer.draws_done))
    try:
        while True:
            while committer.draws_done < committer.round_size:
                c = committer.draws_done // chunk
                start, stop = c * chunk, min(committer.round_size, (c + 1) * chunk)
                texts = generate(c, [encoded[prompts[committer.draw(k)]] for k in range(start, stop)],
                                 (lambda n, b=bar, t=task: b.advance(t, n)) if bar is not None else None,
                                 committer.round)
                committer.commit(texts, start, stop)
            if not committer.next_round():
                break
            if bar is None:  # resumed at the end of a round: no bar was needed until now
                bar, task = _start_bar(progress, committer.round_size, 0)
            else:
                bar.update(task, total=bar.tasks[0].total + committer.round_size)
        writer.finish()
    finally:
        writer.close()
        release_static_decoder()
        if bar is not None:
            bar.stop()
    return report(True)


def _sample_sharded(
    ctx: DistContext, model: Any, tokenizer: Any, dist: LabelDistribution | None, num_samples: int,
    out_path: str | Path, *, columns: list[str], fingerprint: str, label_columns: list[str], text_column: str,
    decoding: DecodingConfig, seed: int, batch_size: int | Literal["auto"], resume: bool, progress: bool,
    drop_empty: bool, drop_duplicates: bool, chunk_size: int | None,
    prompt_encoder: Callable[[str], list[int]] | None, add_bos: bool, eos_token_id: int | Sequence[int] | None,
    backend: Backend, static_cache: bool | Literal["auto"],
) -> SampleReport:
    """Sampling split across the ranks of `ctx`; the merged file is byte-identical to one process's.

    1. Rank 0 alone opens the output (refusing a foreign file or other settings, like one process) and tells
       every rank how many label draws it already holds.
    2. Chunks are the single-process chunks (boundaries from the batch size, seeds from (seed, chunk index)), so
       each chunk's texts do not depend on which rank makes them. Chunks with a finished part file are kept;
       the missing ones are dealt round-robin, rank r taking every K-th. Round-robin over what is *missing* (not
       over chunk indices) keeps a resumed run balanced, and lets it resume with any world size.
    3. Each rank writes every finished chunk to its part file (atomic), then sends its texts to rank 0.
    4. Rank 0 appends the chunks in chunk order through the same post-processing as one process (empty and
       duplicate rows dropped in that order, counts summed), finishes the file and removes the parts.
    """
    t0 = time.perf_counter()
    parts = parts_dir(out_path)
    name = Path(out_path).name
    writer: SyntheticWriter | None = None
    opened: dict[str, Any] = {"status": "refused"}
    failure: BaseException | None = None
    if ctx.is_main:
        try:
            if not resume:
                shutil.rmtree(parts, ignore_errors=True)
            writer = SyntheticWriter(out_path, columns, resume=resume)
            state = _resumable_state(writer, out_path, fingerprint)
            opened = {"status": "complete" if writer.complete else "open", "state": state}
        except Exception as e:  # every rank must hear of it, or the others would wait for rank 0 forever
            failure = e
    opened = share_from_main(ctx, opened)
    if opened["status"] == "refused":
        if failure is not None:
            raise failure
        raise DpsynthError(f"Rank 0 could not open {name} for sampling; see its error message.")

    if not resume and not ctx.is_main:
        shutil.rmtree(parts, ignore_errors=True)  # this node's stale parts, where rank 0 cannot see them
    state = opened["state"]
    counts = _counts(state)
    totals: dict[str, Any] = {"prompts": 0, "new_tokens": 0, "chunks": 0, "reused": 0, "backend": ""}
    batch = 0
    notes: list[str] = [] if dist is None else list(dist.notes)

    def report() -> SampleReport | None:
        if writer is None:
            return None
        return SampleReport(
            out_path=str(out_path), requested=num_samples, rows_written=writer.rows_written,
            resumed_rows=writer.resumed_rows, generated_this_run=totals["prompts"],
            seconds=time.perf_counter() - t0, new_tokens=totals["new_tokens"], batch_size=batch,
            backend=totals["backend"], label_source=None if dist is None else dist.source, complete=True,
            notes=notes, **counts)

    try:
        if opened["status"] == "complete":
            if ctx.is_main:
                shutil.rmtree(parts, ignore_errors=True)  # left over if a run died between finishing and cleanup
            return share_from_main(ctx, report())

        check_same_on_all_ranks(ctx, fingerprint, "sampling settings (sample count, seed, decoding, labels)")
        labels, prompts, encoded = _plan_prompts(dist, num_samples, seed, label_columns, tokenizer, prompt_encoder,
                                                 add_bos)
        committer: _Committer | None = None
        if ctx.is_main and writer is not None:
            try:  # it reads the resumed rows, which may fail: every rank must hear of it in the gather below
                committer = _Committer(writer, fingerprint, labels, label_columns, text_column, drop_empty,
                                       drop_duplicates, state, counts)
                notes += committer.notes
            except Exception as e:
                failure = e
        # With batch_size="auto" each rank proposes what fits its device; all use the smallest.
        proposals = all_gather(ctx, (_resolve_batch_size(model, batch_size, num_samples, encoded, decoding),
                                     failure is None))
        if failure is not None:
            raise failure
        if not all(ok for _, ok in proposals):
            raise DpsynthError(f"Sampling into {name} stopped on rank 0; see its error message.")
        batch = min(b for b, _ in proposals)
        chunk = _chunk_rows(batch, chunk_size)
        round_state: dict[str, Any] | None = state
        while round_state is not None:  # round 0, then any top-up rounds rank 0's committer starts
            round_state = _sample_sharded_round(
                ctx, round_state, committer, generate=_Generator(model, tokenizer, decoding, batch, seed, backend,
                                                                 static_cache, eos_token_id, GenerationStats()),
                prompts=prompts, encoded=encoded, num_samples=num_samples, chunk=chunk, parts=parts,
                fingerprint=fingerprint, name=name, progress=progress, totals=totals)

        merged: SampleReport | None = None
        if ctx.is_main:
            assert writer is not None
            try:
                writer.finish()
                shutil.rmtree(parts, ignore_errors=True)
                if ctx.enabled or totals["reused"]:
                    notes.append(f"sampled in {totals['chunks']} chunks of up to {chunk} rows across "
                                 f"{ctx.world_size} process(es); {totals['reused']} finished chunk(s) reused from "
                                 "an interrupted run")
                if totals.get("idle_ranks"):
                    notes.append(f"{totals['idle_ranks']} of {ctx.world_size} processes had no chunk to make: a "
                                 f"chunk holds up to {chunk} rows whatever the number of processes (so that the "
                                 "records do not depend on it); sample more records, or use fewer processes, to "
                                 "keep every process busy")
                merged = report()
            except Exception as e:
                failure = e
        merged = share_from_main(ctx, merged)
        if failure is not None:
            raise failure
        if merged is None:
            raise DpsynthError(f"Sampling into {name} stopped on another rank; see rank 0's error message. The "
                               "chunks finished so far are kept and the same command resumes from them.")
        if not ctx.is_main:
            shutil.rmtree(parts, ignore_errors=True)  # this node's parts, where rank 0 cannot see them
        return merged
    finally:
        if writer is not None:
            writer.close()


def _sample_sharded_round(
    ctx: DistContext, round_state: Mapping[str, Any], committer: _Committer | None, *, generate: _Generator,
    prompts: list[str], encoded: Mapping[str, list[int]], num_samples: int, chunk: int, parts: Path,
    fingerprint: str, name: str, progress: bool, totals: dict[str, Any],
) -> dict[str, Any] | None:
    """One round of `_sample_sharded` (steps 2-4) on every rank; returns the next round's state (the same on all
    ranks), or None when the output is complete. `committer` is rank 0's (None elsewhere)."""
    round_ = int(round_state.get("round", 0))
    members = [int(m) for m in round_state["members"]] if round_ else None
    size = num_samples if members is None else len(members)
    # A top-up round's parts are valid only for its very draws (`members`): parts left by another run whose round 0
    # dropped other rows must not pass, or their texts would be written under other labels.
    part_fingerprint = fingerprint if members is None else hashlib.sha256(
        json.dumps([fingerprint, round_, members]).encode()).hexdigest()[:16]
    bounds = [(s, min(size, s + chunk)) for s in range(0, size, chunk)]
    todo = range(int(round_state.get("draws_done", 0)) // chunk, len(bounds))

    def part(c: int) -> list[str] | None:
        return read_part(parts, c, fingerprint=part_fingerprint, start=bounds[c][0], stop=bounds[c][1])

    def ids(c: int) -> list[list[int]]:
        return [encoded[prompts[k if members is None else members[k]]] for k in range(*bounds[c])]

    owner: dict[int, int] = {}  # who sends each chunk to rank 0: the lowest rank that has it
    for r, found in enumerate(all_gather(ctx, [c for c in todo if part(c) is not None])):
        for c in found:
            owner.setdefault(c, r)
    totals["reused"] += len(owner)
    totals["chunks"] += len(bounds)
    missing = [c for c in todo if c not in owner]
    owner.update({c: i % ctx.world_size for i, c in enumerate(missing)})
    mine = missing[ctx.rank::ctx.world_size]
    if round_ == 0 and 0 < len(missing) < ctx.world_size:
        totals["idle_ranks"] = ctx.world_size - len(missing)

    texts_of: dict[int, list[str]] = {}
    bar, task = _start_bar(progress and ctx.is_main, sum(bounds[c][1] - bounds[c][0] for c in mine), 0)
    own_failure: Exception | None = None
    try:
        for c in mine:
            texts_of[c] = generate(c, ids(c), (lambda n: bar.advance(task, n)) if bar is not None else None, round_)
            write_part(parts, c, fingerprint=part_fingerprint, start=bounds[c][0], stop=bounds[c][1],
                       texts=texts_of[c])
    except Exception as e:  # reported to rank 0 below, so that no rank waits for one that gave up
        own_failure = e
    finally:
        release_static_decoder()
        if bar is not None:
            bar.stop()

    # Rank 0 may not see other nodes' files, so the texts it needs travel over the process group.
    if not ctx.is_main and own_failure is None:
        for c, r in owner.items():
            if r == ctx.rank and c not in texts_of:
                texts_of[c] = part(c)  # type: ignore[assignment]
    stats = generate.stats
    sent = {} if ctx.is_main or own_failure is not None else texts_of
    gathered = gather_to_main(ctx, {"texts": sent, "prompts": stats.prompts, "new_tokens": stats.new_tokens,
                                    "backend": stats.backend, "failed": own_failure is not None})

    outcome: dict[str, Any] = {"status": "failed"}
    failure: Exception | None = None
    if ctx.is_main:
        assert committer is not None and gathered is not None
        failed = [r for r, g in enumerate(gathered) if g["failed"]]
        try:
            if failed:
                raise DpsynthError(f"Sampling failed on rank(s) {failed}; the chunks finished so far are kept "
                                   "and the same command resumes from them.")
            for g in gathered:
                texts_of.update(g["texts"])
                totals["prompts"] += g["prompts"]
                totals["new_tokens"] += g["new_tokens"]
                totals["backend"] = totals["backend"] or g["backend"]
            for c in todo:
                texts = texts_of.pop(c, None) or part(c)
                if texts is None:
                    raise DpsynthError(f"The finished chunk {c} of {name} went missing before it was merged; "
                                       "run the same command again to regenerate it.")
                committer.commit(texts, *bounds[c])
            more = committer.next_round()
            outcome = {"status": "next", "state": dict(committer.writer.state or {})} if more else {"status": "done"}
        except Exception as e:
            failure = e
    outcome = share_from_main(ctx, outcome)
    if own_failure is not None:
        raise own_failure
    if failure is not None:
        raise failure
    if outcome["status"] == "failed":
        raise DpsynthError(f"Sampling into {name} stopped on another rank; see rank 0's error message. The "
                           "chunks finished so far are kept and the same command resumes from them.")
    return outcome.get("state")
