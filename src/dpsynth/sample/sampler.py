"""Sample a synthetic dataset: draw label combinations, prompt with their control codes, write text + labels.

Resumable by construction: the label draws are a deterministic function of (distribution, N, seed), records are
generated in fixed chunks whose seed depends only on (seed, chunk index, top-up round), and every chunk is
committed to the output with its progress record (`SyntheticWriter`). A killed run therefore continues at the
first missing record, and with the same batch size produces exactly the file an uninterrupted run would have.

One loop for any number of processes (a single process is world size 1): the chunks are taken in waves of one per
rank; each rank generates its chunk of the wave, rank 0 gathers the texts and commits them in chunk order, then
says whether another wave, another (top-up) round or nothing follows. Chunk boundaries come from the batch size
alone, never from the world size, so the file is the same whoever made it, and a run killed under K ranks resumes
under any number of them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dpsynth.config import DecodingConfig
from dpsynth.data.control_codes import ControlCodes
from dpsynth.errors import DpsynthError
from dpsynth.privacy.labels import LabelDistribution
from dpsynth.runtime.progress import RecordProgress
from dpsynth.runtime.ranks import SINGLE_PROCESS, DistContext
from dpsynth.sample.generate import Decoder, GenerationStats, auto_batch_size, encode_prompts
from dpsynth.sample.writer import SyntheticWriter, drop_reasons

MIN_CHUNK_ROWS = 256
MAX_TOPUP_ROUNDS = 5


class SamplingSettingsChanged(DpsynthError):
    """The output holds a resumable sampling run of other settings (a caller may choose to start it over)."""


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


@dataclass(frozen=True)
class SamplingJob:
    """What to sample and where: the output, its columns, the labels and the decoding."""

    out_path: Path
    num_samples: int
    label_columns: list[str]
    text_column: str
    labels: LabelDistribution | None
    decoding: DecodingConfig
    seed: int = 0
    batch_size: int | Literal["auto"] = "auto"
    drop_empty: bool = True
    drop_duplicates: bool = False
    chunk_size: int | None = None
    add_bos: bool = False
    model_id: str | None = None

    @property
    def columns(self) -> list[str]:
        return [self.text_column, *self.label_columns]

    def fingerprint(self) -> str:
        """What must match for a resume to continue the same run (the label draws and decoding depend on it, the
        texts on the model: `model_id` keeps a file sampled from an earlier model from being "resumed")."""
        dist = self.labels
        payload = {
            "num_samples": self.num_samples, "seed": self.seed, "label_columns": list(self.label_columns),
            "text_column": self.text_column, "decoding": asdict(self.decoding),
            "labels": None if dist is None else [[c, float(p)] for c, p in zip(dist.combos, dist.probabilities)],
            "model": self.model_id,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _chunk_seed(seed: int, chunk: int, round_: int = 0) -> int:
    """The seed of one chunk; top-up rounds (see `_Committer`) get their own, so a redrawn row is a new sample."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, 0x5A3D, chunk] + ([round_] if round_ else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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
    mid-round like any other. Lives on rank 0 only.
    """

    writer: SyntheticWriter
    job: SamplingJob
    labels: list[dict[str, Any]]
    state: dict[str, Any]
    seen: set[tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        self.fingerprint = self.job.fingerprint()
        self.counts = {k: int(self.state.get(k, 0))
                       for k in ("dropped_empty", "dropped_duplicates", "replaced", "topup_rounds")}
        self.round = int(self.state.get("round", 0))
        self.members: list[int] | None = list(self.state["members"]) if self.round else None  # None: all draws
        self.draws_done = int(self.state.get("draws_done", 0))
        self.redo: list[int] = [int(i) for i in self.state.get("redo", [])]
        self.kept_this_round = int(self.state.get("kept_this_round", 0))
        if self.job.drop_duplicates:  # duplicates of rows already in a resumed file count too
            self.seen = set()
            try:
                rows = self.writer.read_rows()
            except (ValueError, csv.Error) as e:  # JSONDecodeError is a ValueError
                raise DpsynthError(f"{self.writer.path.name} cannot be read back to resume it ({type(e).__name__}: "
                                   "its rows were changed after they were written); pass --overwrite to sample it "
                                   "again, or choose another output path.") from None
            drop_reasons(rows, text_column=self.job.text_column, drop_empty=False, drop_duplicates=True,
                         seen=self.seen)

    def progress(self) -> dict[str, Any]:
        """Where the run stands (what every rank needs to take the next wave)."""
        return {"round": self.round, "members": self.members, "draws_done": self.draws_done}

    def commit(self, texts: Sequence[str], start: int, stop: int) -> None:
        skip = self.draws_done - start  # rows of this chunk already on disk (only if the chunk size changed)
        draws = [k if self.members is None else self.members[k] for k in range(self.draws_done, stop)]
        rows = [{self.job.text_column: t, **{c: self.labels[d][c] for c in self.job.label_columns}}
                for t, d in zip(texts[skip:], draws)]
        reasons = drop_reasons(rows, text_column=self.job.text_column, drop_empty=self.job.drop_empty,
                               drop_duplicates=self.job.drop_duplicates, seen=self.seen)
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


def sample_synthetic(model: Any, tokenizer: Any, job: SamplingJob, *, resume: bool = True, progress: bool = True,
                     ranks: DistContext = SINGLE_PROCESS, static_cache: bool | Literal["auto"] = "auto",
                     eos_token_id: int | Sequence[int] | None = None) -> SampleReport:
    """Generate `job.num_samples` records into `job.out_path` (.csv/.jsonl/.parquet): one text column plus the labels.

    Labels come from `job.labels` (DP or declared public), drawn in exact proportions; each record is the model's
    continuation of the training prefix for its labels (`ControlCodes.prefix`). Empty texts (and, if asked, exact
    duplicate rows) are dropped as free post-processing and redrawn with the same labels in top-up rounds
    (`_Committer`), so `rows_written` is below `num_samples` only when those rounds stop short. `resume=True`
    continues an interrupted run of the same settings and refuses one with different settings; `resume=False`
    overwrites. Under torchrun every rank calls this with the same arguments and weights; every rank gets the same
    report.
    """
    _check_job(job)
    t0 = time.perf_counter()
    writer, state = _open_output(ranks, job, resume)
    labels = job.labels.draw(job.num_samples, job.seed) if job.labels is not None else \
        [{} for _ in range(job.num_samples)]
    committer = _on_main(ranks, lambda: None if state is None else _Committer(writer, job, labels, state))
    stats = GenerationStats()
    notes: list[str] = [] if job.labels is None else list(job.labels.notes)
    if state is None:  # complete already
        return _finish(ranks, writer, committer, job, stats, t0, notes)
    codes = ControlCodes(job.label_columns)
    prompts = [codes.prefix(lab) for lab in labels]
    distinct = sorted(set(prompts))
    encoded = dict(zip(distinct, encode_prompts(tokenizer, distinct, add_bos=job.add_bos)))
    batch = min(ranks.all_gather(_batch_size(model, job, encoded)))
    chunk = job.chunk_size or batch * math.ceil(MIN_CHUNK_ROWS / batch)
    decoder = Decoder(model, tokenizer, job.decoding, batch_size=batch, static_cache=static_cache,
                      eos_token_id=eos_token_id)
    where = ranks.share_from_main(committer.progress() if committer else None)
    bar = RecordProgress(progress and ranks.is_main, job.num_samples,
                         job.num_samples - (_round_size(where, job) - where["draws_done"]))
    try:
        if where["round"] == 0 and ranks.enabled and 0 < math.ceil(job.num_samples / chunk) < ranks.world_size:
            notes.append(f"{ranks.world_size - math.ceil(job.num_samples / chunk)} of {ranks.world_size} processes "
                         f"had no chunk to make: a chunk holds up to {chunk} rows whatever the number of processes "
                         "(so that the records do not depend on it); sample more records, or use fewer processes, "
                         "to keep every process busy")
        while where is not None:
            where = _wave(ranks, where, committer, decoder, job, prompts, encoded, chunk, bar, stats)
        if ranks.enabled:
            notes.append(f"sampled in chunks of up to {chunk} rows across {ranks.world_size} processes")
    finally:
        decoder.close()
        bar.stop()
    return _finish(ranks, writer, committer, job, stats, t0, notes)


def _check_job(job: SamplingJob) -> None:
    if job.num_samples < 0:
        raise DpsynthError("The number of synthetic records must be ≥ 0.")
    if job.text_column in job.label_columns:
        raise DpsynthError(f"The text column '{job.text_column}' cannot also be a label column.")
    if job.label_columns and job.labels is None:
        raise DpsynthError("Label columns were given but no label distribution; build one with dp_label_histogram "
                           "or public_label_distribution.")
    if job.labels is not None and set(job.labels.label_columns) != set(job.label_columns):
        raise DpsynthError(f"The label distribution is over {job.labels.label_columns}, not the label columns "
                           f"{job.label_columns}; build it for the same columns.")


def _on_main(ranks: DistContext, make: Any) -> Any:
    """`make()` on rank 0, its failure made known to every rank (which would otherwise wait for rank 0 forever)."""
    failure: Exception | None = None
    result = None
    if ranks.is_main:
        try:
            result = make()
        except Exception as e:
            failure = e
    failed = ranks.share_from_main(failure is not None)
    if failure is not None:
        raise failure
    if failed:
        raise DpsynthError("Sampling stopped on rank 0; see its error message. The chunks finished so far are kept "
                           "and the same command resumes from them.")
    return result


def _open_output(ranks: DistContext, job: SamplingJob, resume: bool) -> tuple[SyntheticWriter | None,
                                                                              dict[str, Any] | None]:
    """Rank 0 opens the output (refusing a foreign file or other settings); every rank learns its progress state,
    None when the output is complete already."""
    def open_() -> tuple[SyntheticWriter, dict[str, Any] | None]:
        writer = SyntheticWriter(job.out_path, job.columns, resume=resume)
        state = writer.state or {}
        if writer.rows_written and not state:
            raise DpsynthError(f"{job.out_path.name} already holds rows that were not written by a resumable dpsynth "
                               "sampling run; choose another output path or overwrite it.")
        if state and state.get("fingerprint") != job.fingerprint():
            raise SamplingSettingsChanged(f"{job.out_path.name} is from a sampling run with different settings "
                                          "(sample count, seed, decoding, labels or model); pass --overwrite to "
                                          "replace it, or choose another output path.")
        return writer, None if writer.complete else state

    opened = _on_main(ranks, open_)
    writer, state = opened if opened is not None else (None, None)
    ranks.check_same(job.fingerprint(), "sampling settings (sample count, seed, decoding, labels)")
    complete = ranks.share_from_main(state is None)
    return writer, None if complete else (state if state is not None else {})


def _batch_size(model: Any, job: SamplingJob, encoded: Mapping[str, list[int]]) -> int:
    """This rank's batch size ("auto": what fits its device; all ranks then use the smallest)."""
    if job.batch_size == "auto" and encoded:
        return auto_batch_size(model, job.num_samples, max(len(v) for v in encoded.values()),
                               job.decoding.max_new_tokens)
    return max(1, int(job.batch_size)) if job.batch_size != "auto" else 1


def _round_size(where: Mapping[str, Any], job: SamplingJob) -> int:
    return job.num_samples if where["members"] is None else len(where["members"])


def _wave(ranks: DistContext, where: dict[str, Any], committer: _Committer | None, decoder: Decoder,
          job: SamplingJob, prompts: list[str], encoded: Mapping[str, list[int]], chunk: int, bar: RecordProgress,
          stats: GenerationStats) -> dict[str, Any] | None:
    """The next wave of chunks (one per rank) of the current round; returns where the run stands after it, or None
    when the output is complete. The same on every rank."""
    members, round_ = where["members"], where["round"]
    size = _round_size(where, job)
    first = where["draws_done"] // chunk
    bounds = [(c * chunk, min(size, (c + 1) * chunk)) for c in range(first, first + ranks.world_size)
              if c * chunk < size]
    texts: list[str] | None = None
    failure: Exception | None = None
    if ranks.rank < len(bounds):
        start, stop = bounds[ranks.rank]
        ids = [encoded[prompts[k if members is None else members[k]]] for k in range(start, stop)]
        try:
            texts = decoder.texts(ids, seed=_chunk_seed(job.seed, first + ranks.rank, round_),
                                  progress=bar.advance, stats=stats)
        except Exception as e:  # reported to rank 0 below, so that no rank waits for one that gave up
            failure = e
    gathered = ranks.gather_to_main({"texts": texts, "failed": failure is not None})

    def commit() -> dict[str, Any] | None:
        assert committer is not None and gathered is not None
        failed = [r for r, g in enumerate(gathered) if g["failed"]]
        if failed:
            raise DpsynthError(f"Sampling failed on rank(s) {failed}; the chunks written so far are kept and the "
                               "same command resumes from them.")
        for (start, stop), g in zip(bounds, gathered):
            committer.commit(g["texts"], start, stop)
        if committer.draws_done < _round_size(committer.progress(), job):
            return committer.progress()
        if committer.next_round():
            bar.grow(len(committer.members or []))
            return committer.progress()
        return None

    try:
        outcome = _on_main(ranks, commit)
    except Exception:
        if failure is not None:  # this rank's own failure is the one to report
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return ranks.share_from_main(outcome)


def _finish(ranks: DistContext, writer: SyntheticWriter | None, committer: _Committer | None, job: SamplingJob,
            stats: GenerationStats, t0: float, notes: list[str]) -> SampleReport:
    """Rank 0 finishes the file; every rank returns the same report, its counts summed over the ranks."""
    totals = ranks.all_gather((stats.prompts, stats.new_tokens, stats.backend, stats.batch_size))

    def finish() -> SampleReport:
        assert writer is not None
        try:
            writer.finish()
        finally:
            writer.close()
        counts = committer.counts if committer is not None else {
            k: int((writer.state or {}).get(k, 0))
            for k in ("dropped_empty", "dropped_duplicates", "replaced", "topup_rounds")}
        return SampleReport(
            out_path=str(job.out_path), requested=job.num_samples, rows_written=writer.rows_written,
            resumed_rows=writer.resumed_rows, generated_this_run=sum(t[0] for t in totals),
            seconds=time.perf_counter() - t0, new_tokens=sum(t[1] for t in totals),
            batch_size=max(t[3] for t in totals), backend=next((t[2] for t in totals if t[2]), ""),
            label_source=None if job.labels is None else job.labels.source, complete=True, notes=notes, **counts)

    return ranks.share_from_main(_on_main(ranks, finish))
