"""`dpsynth audit`: does the trained model (and its synthetic data) leak secrets planted in the training data?

The reference recipe's leakage test (Yue et al. 2023, after Carlini et al. 2019), run end to end:

1. read the user's table, hold out a small non-member split (for membership inference);
2. insert canaries — made-up secrets in five formats (name, address, phone, email, plate), each repeated 1, 10
   or 100 times — into the rest, and write that canaried training file to ``OUT/data/`` (it holds the user's
   private records: it never leaves OUT);
3. run the whole `dpsynth run` pipeline on it once per ε (default 4 and ∞, i.e. DP and non-private) into
   ``OUT/eps-<ε>/``;
4. for every canary: rank of the true secret's likelihood among same-format candidates that were never
   inserted, exposure in bits, and how many synthetic records contain the secret verbatim; and the AUC of a
   loss-based membership-inference attack (training records vs the held-out ones);
5. write ``OUT/audit.json`` (aggregates and made-up secrets only, never a real record).

With a user column (user-level DP) every canary is one new user and membership inference works on users
(`dpsynth.evaluate.audit_users`); an interrupted audit continues with `resume`
(`dpsynth.evaluate.audit_resume`).

Likelihoods are computed in the exact training format: control codes of the canary's record, then the canary
text, then EOS, tokenised as `dpsynth.data.encode.encode_records` does. The shared context (control codes +
"My phone number is") is run through the model once and its key/value cache reused for every candidate, which
halves the cost of ranking thousands of candidates.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpsynth import outputs
from dpsynth.config import (
    RUN_SETTINGS,
    RunConfig,
    check_text_and_labels,
    describe_validation_error,
    run_setting,
    split_comma_list,
)
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.canaries import FORMATS, REPETITIONS, _common_prefix
from dpsynth.train.loss import IGNORE_INDEX, per_example_lm_loss

AUDIT_FILE = "audit.json"
DATA_DIR = "data"
TRAIN_FILE = "train_with_canaries.csv"
HELDOUT_FILE = "heldout.csv"
SUMMARY_COLUMNS = ("measure", "value", "good is")
_CANDIDATES_GPU, _CANDIDATES_CPU = 10_000, 1_000


class AuditConfig(BaseModel):
    """Everything `dpsynth audit` needs. Field docs double as `--help` texts.

    The settings it passes on to `dpsynth run` (`config.RUN_SETTINGS`) take RunConfig's definitions through
    `run_setting`: same defaults, bounds and help texts, only their types are written again here.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data and output
    data: Path = run_setting("data")
    text_column: str = run_setting("text_column")
    label_columns: list[str] = run_setting("label_columns")
    user_column: str | None = run_setting("user_column", "Each canary is then one new user, and membership "
                                                          "inference holds out users.")
    max_records_per_user: int = run_setting("max_records_per_user", "This caps the trained copies of a canary too.")
    drop_empty: bool = run_setting("drop_empty")
    out: Path = Field(description="Audit folder: data/ (PRIVATE: your records plus canaries), eps-<ε>/ runs, "
                                  "audit.json.")
    overwrite: bool = Field(False, description="Replace an earlier audit in --out.")
    resume: bool = Field(False, description="Continue an interrupted audit in --out: finished ε runs are reused, an "
                                            "interrupted one continues from its checkpoint (same settings needed).")

    # --- the audit
    epsilons: list[float] = Field(default_factory=lambda: [4.0, math.inf],
                                  description="ε values to train at; 'inf' trains without DP for comparison. "
                                              "Default: 4,inf.")
    formats: list[str] = Field(default_factory=lambda: list(FORMATS),
                               description="Canary formats: name, address, phone, email, plate. Default: all.")
    repetitions: list[int] | None = Field(
        None, description="How often each canary is inserted, comma-separated (e.g. 1,10,100). Default: 1,10,100, "
                          "dropping the largest counts until canaries are at most --max-canary-share of the data.")
    canaries_per_setting: int = Field(1, ge=1, description="Canaries per format and repetition count.")
    max_canary_share: float = Field(0.05, gt=0, lt=1, description="With automatic --repetitions: largest share of "
                                                                  "the training records that canaries may take.")
    num_candidates: int | None = Field(None, ge=1, description="Same-format candidate secrets each true secret is "
                                                               "ranked against. Default: 10,000 on a GPU, 1,000 "
                                                               "on CPU.")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of records held out of training as "
                                                                 "membership-inference non-members.")
    mia_max_records: int = Field(1000, ge=1, description="At most this many held-out records (and as many "
                                                         "training records) for membership inference; users "
                                                         "with --user-column.")
    show_progress: bool = Field(True, description="Show progress bars while ranking canaries.")
    score_batch_size: int | None = Field(None, ge=1, description="Sequences per forward pass when scoring. "
                                                                 "Default: 512 on a GPU, 64 on CPU.")

    # --- passed to every `dpsynth run`
    model: str | None = run_setting("model")
    finetune: Literal["lora", "full"] = run_setting("finetune")
    lora_rank: int = run_setting("lora_rank")
    lora_targets: list[str] = run_setting("lora_targets")
    loss_on_prefix: bool = run_setting("loss_on_prefix")
    delta: float | None = run_setting("delta")
    clip_norm: float = run_setting("clip_norm")
    epochs: float | None = run_setting("epochs")
    batch_size: int | None = run_setting("batch_size")
    physical_batch_size: int = run_setting("physical_batch_size")
    checkpoint_every: int = run_setting("checkpoint_every")
    learning_rate: float | None = run_setting("learning_rate")
    lr_schedule: Literal["constant", "linear"] | None = run_setting("lr_schedule")
    max_tokens: int = run_setting("max_tokens")
    num_samples: int | None = run_setting("num_samples", "The audit writes this many per ε run.")
    max_new_tokens: int | None = run_setting("max_new_tokens")
    sample_batch_size: int = run_setting("sample_batch_size")
    label_distribution: str = run_setting("label_distribution")
    label_values: Path | None = run_setting("label_values")
    seed: int = run_setting("seed", "The audit also draws its held-out split and its canaries from it.")
    device: Literal["auto", "cpu", "cuda"] = run_setting("device", "The audit scores the canaries there too.")
    precision: Literal["auto", "fp32", "bf16"] = run_setting("precision")

    @field_validator("label_columns", "formats", "lora_targets", mode="before")
    @classmethod
    def _split_words(cls, v: Any) -> Any:
        return split_comma_list(v)

    @field_validator("epsilons", "repetitions", mode="before")
    @classmethod
    def _split_numbers(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [c.strip() for c in v.split(",") if c.strip()]
        if isinstance(v, (list, tuple)):
            return [math.inf if isinstance(x, str) and x.lower() in {"inf", "infinity"} else x for x in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AuditConfig:
        check_text_and_labels(self.text_column, self.label_columns, self.user_column)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pick one")
        if not self.epsilons:
            raise ValueError("--epsilons needs at least one value, e.g. 4,inf")
        if any(not e > 0 for e in self.epsilons):
            raise ValueError("every value of --epsilons must be positive (or inf)")
        if len({_eps_tag(e) for e in self.epsilons}) != len(self.epsilons):
            raise ValueError("a value of --epsilons is listed twice")
        if not self.formats:
            raise ValueError("--formats needs at least one canary format")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown canary format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("a canary format is listed twice in --formats")
        if self.repetitions is not None:
            if not self.repetitions or any(r < 1 for r in self.repetitions):
                raise ValueError("every value of --repetitions must be at least 1")
            if len(set(self.repetitions)) != len(self.repetitions):
                raise ValueError("a value of --repetitions is listed twice")
        return self


def make_audit_config(**values: Any) -> AuditConfig:
    """Build an AuditConfig from CLI-style values (None = not given), as one-sentence `DpsynthError`s on failure."""
    try:
        return AuditConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc).replace("dpsynth run --help", "dpsynth audit --help")) \
            from None


def _eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def auto_repetitions(num_records: int, num_formats: int, per_setting: int = 1, max_share: float = 0.05,
                     choices: Sequence[int] = REPETITIONS, cap: int | None = None) -> list[int]:
    """The reference's 1, 10, 100 repetitions, dropping the largest while canaries would exceed `max_share` of N.

    Why: 5 formats × (1 + 10 + 100) = 555 canary records are 0.03 % of the reference's 1.9M Yelp reviews but a
    quarter of a 2,000-record table, where they would dominate training (and the utility of the synthetic data).
    At least the smallest count is always kept. With a per-user `cap` (user-level DP) a canary user contributes at
    most `cap` trained copies, so only those count.
    """
    reps = sorted(choices)
    while len(reps) > 1 and num_formats * per_setting * sum(min(r, cap or r) for r in reps) > max_share * num_records:
        reps.pop()
    return reps


# ------------------------------------------------------------------------------------------------ scoring


def continuation_nll(model: Any, context_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
                     batch_size: int = 64) -> np.ndarray:
    """Total negative log-likelihood (nats) of each token continuation after one shared context.

    The context goes through the model once; its key/value cache is copied for every batch of continuations, so
    only the continuation tokens are computed per candidate. Continuations are right-padded (padding comes after
    the real tokens, so causal attention never sees it).
    """
    import torch

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
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def training_format_ids(tokenizer: Any, control_prefix: str, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of "control codes + text + EOS" exactly as training builds them (no truncation)."""
    from dpsynth.data.encode import encode_records

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
    shared = min(_common_prefix(seqs[0], s) for s in seqs[1:])
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
    import torch

    from dpsynth.data.encode import collate, encode_records

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


# ------------------------------------------------------------------------------------------------ results


@dataclass
class AuditResult:
    """What `run_audit` produced: the audit record (as in audit.json) and where everything is."""

    report: dict[str, Any]
    audit_path: Path
    data_dir: Path
    run_dirs: list[Path]
    sentences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how to read this audit (privacy unit, per-user cap)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(measure, value, what good looks like) rows for a rich table in the CLI, one block per ε."""
        rows: list[tuple[str, str, str]] = []
        ranked = self.report["settings"]["secrets_ranked"]
        for run in self.report["runs"]:
            tag = f"ε = {run['epsilon_label']}"
            cans = run["canaries"]
            best = min(cans, key=lambda c: c["rank"])
            rows.append((f"{tag}: best canary rank", f"{_fmt_rank(best['rank'])} of {ranked:,} "
                         f"({best['format']}, ×{best['repetitions']})",
                         f"high; a secret the model ignores ranks ≈ {(ranked + 1) / 2:,.0f}"))
            rows.append((f"{tag}: largest exposure", f"{best['exposure_bits']:.1f} bits",
                         f"near 0; {math.log2(ranked):.1f} = the secret is the model's first choice"))
            for reps, agg in sorted(run["by_repetitions"].items(), key=lambda kv: int(kv[0])):
                trained = agg.get("copies_trained", int(reps))
                capped = f" ({trained} trained)" if trained != int(reps) else ""
                rows.append((f"{tag}: canaries ×{reps}{capped} ranked first / verbatim",
                             f"{agg['rank_1']} / {agg['verbatim']} of {agg['canaries']}", "0 / 0"))
            mia = run["membership_inference"]
            users = mia.get("unit") == "user"
            rows.append((f"{tag}: {'user-level ' if users else ''}membership-inference AUC",
                         f"{mia['auc']:.3f} ± {mia['std_error']:.3f} ({mia['members']} vs {mia['nonmembers']}"
                         f"{' users' if users else ''})", "0.5 (no better than guessing)"))
        return rows


def _fmt_rank(rank: float) -> str:
    return f"{rank:,.0f}" if float(rank).is_integer() else f"{rank:,.1f}"


def _summarise_run(run: dict[str, Any], ranked: int) -> str:
    """One sentence per ε, in the words of the reference's canary table."""
    cans = run["canaries"]
    best = min(cans, key=lambda c: c["rank"])
    head = (f"At ε = {run['epsilon_label']}" if run["private"] else "Without DP (ε = ∞)")
    top = max(run["by_repetitions"], key=int)
    agg = run["by_repetitions"][top]
    mia = run["membership_inference"]
    users = mia.get("unit") == "user"
    trained = agg.get("copies_trained", int(top))
    capped = f" ({trained} cop{'ies' if trained != 1 else 'y'} trained)" if trained != int(top) else ""
    return (f"{head}: the best-ranked canary ({best['format']}, {best['repetitions']} repetition"
            f"{'s' if best['repetitions'] != 1 else ''}) ranked {_fmt_rank(best['rank'])} of {ranked:,} "
            f"(exposure {best['exposure_bits']:.1f} bits); of the {agg['canaries']} canar"
            f"{'y users' if users else 'ies'} with {top} repetition{'s' if int(top) != 1 else ''}{capped}, "
            f"{agg['rank_1']} rank first and {agg['verbatim']} appear verbatim in the synthetic data; "
            f"{'user-level ' if users else ''}membership-inference AUC {mia['auc']:.2f} (± {mia['std_error']:.2f}).")


def _by_repetitions(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for reps in sorted({r["repetitions"] for r in rows}):
        sel = [r for r in rows if r["repetitions"] == reps]
        ranks = [r["rank"] for r in sel]
        out[str(reps)] = {"canaries": len(sel), "rank_1": sum(r == 1.0 for r in ranks),
                          "verbatim": sum(r["verbatim_count"] > 0 for r in sel), "best_rank": min(ranks),
                          "copies_trained": max(r.get("copies_trained", reps) for r in sel),
                          "median_rank": float(np.median(ranks)),
                          "max_exposure_bits": max(r["exposure_bits"] for r in sel)}
    return out


def print_audit_summary(result: AuditResult, console: Any = None) -> None:
    """The table, the sentences and the paths, as `dpsynth audit` shows them."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="dpsynth audit")
    for col in SUMMARY_COLUMNS:
        table.add_column(col)
    for row in result.summary_rows():
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for note in result.notes:
        console.print(f"[bold]note:[/] {escape(note)}")
    for sentence in result.sentences:
        console.print(escape(sentence))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"audit:  {result.audit_path}\nruns:   {', '.join(str(p) for p in result.run_dirs)}\n"
                  f"data:   {result.data_dir} (contains your private records; do not share it)")


# ------------------------------------------------------------------------------------------------ the audit


def _check_out(out: Path, overwrite: bool, resume: bool = False) -> None:
    from dpsynth.evaluate.audit_resume import STATE_FILE

    if out.exists() and not out.is_dir():
        raise DpsynthError(f"--out {out} is a file, not a folder; choose a folder path")
    if resume:
        if not (out / STATE_FILE).is_file():
            raise DpsynthError(f"--resume: {out} holds no interrupted audit to continue (no {STATE_FILE}); drop "
                               "--resume to start one")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DpsynthError(f"--out {out} already holds files; pass --overwrite to replace an earlier audit or "
                           "--resume to continue an interrupted one")


def _clear_out(out: Path) -> None:
    """Remove only what an audit writes (never unrelated files)."""
    from dpsynth.evaluate.audit_resume import STATE_FILE

    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name in (DATA_DIR, AUDIT_FILE, STATE_FILE) or (child.is_dir() and child.name.startswith("eps-")):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _run_config(cfg: AuditConfig, data: Path, out: Path, eps: float) -> RunConfig:
    """The `dpsynth run` of one ε: the audit's run settings as they are, on the canaried training file."""
    try:
        return RunConfig(data=data, out=out, epsilon=eps, **cfg.model_dump(include=set(RUN_SETTINGS)))
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


def _canary_control_prefix(codes: Any, table: pd.DataFrame, canary: Any, text_column: str,
                           label_columns: list[str]) -> tuple[str, dict[str, str]]:
    """The control codes most of the canary's copies were trained with (copies take labels from random records)."""
    if not label_columns:
        return "", {}
    rows = table.loc[table[text_column] == canary.text, label_columns]
    combo = Counter(tuple(str(v) for v in r) for r in rows.itertuples(index=False)).most_common(1)[0][0]
    labels = dict(zip(label_columns, combo))
    return codes.prefix(labels), labels


@dataclass
class _AuditData:
    """The audit's deterministic data: split, canaries, the canaried training file, what training keeps of it."""

    train: pd.DataFrame  # the user's records used for training (before canaries)
    heldout: pd.DataFrame  # non-members: records, or whole users with --user-column
    canaries: list[Any]
    reps: list[int]
    canaried: pd.DataFrame  # train + canary copies, shuffled: OUT/data/train_with_canaries.csv
    trained: pd.DataFrame  # what `dpsynth run` trains on: `canaried` after the per-user cap
    copies: dict[str, int]  # canary id → copies training keeps
    user_ids: dict[str, str]  # canary id → its user id (empty without --user-column)
    members: pd.DataFrame  # MIA: records of the member records / users
    nonmembers: pd.DataFrame
    mia_units: int  # members (= non-members): records, or users
    dropped_by_cap: int  # the user's own records the per-user cap removes


def _prepare_data(cfg: AuditConfig, table: pd.DataFrame, warnings: list[str], notes: list[str]) -> _AuditData:
    """Split, make and insert the canaries, apply the per-user cap as training will, and pick the MIA samples."""
    from dpsynth.data.split import split_train_test
    from dpsynth.evaluate import audit_users as au
    from dpsynth.evaluate import canaries as cn
    from dpsynth.stages import cap_records_per_user

    ucol, cap = cfg.user_column, cfg.max_records_per_user
    if ucol:
        users = int(table[ucol].nunique())
        if users < 4:
            raise DpsynthError(f"the table has {users} users; a user-level audit needs at least 4 (training and "
                               "held-out users)")
        n_hold = max(1, min(round(users * cfg.holdout_fraction), cfg.mia_max_records, users // 2))
        train, heldout = au.split_users(table, ucol, n_hold, cfg.seed)
        trained_own, _, dropped = cap_records_per_user(train, ucol, cap)
        base = len(trained_own)
    else:
        n = len(table)
        if n < 4:
            raise DpsynthError(f"the table has {n} usable records; an audit needs at least 4 (training and held-out)")
        n_hold = max(1, min(round(n * cfg.holdout_fraction), cfg.mia_max_records, n // 2))
        stratify = cfg.label_columns[0] if cfg.label_columns else None
        train, heldout = split_train_test(table, n_hold / n, seed=cfg.seed, stratify=stratify)
        base, dropped = len(train), 0

    reps = list(cfg.repetitions) if cfg.repetitions is not None else auto_repetitions(
        base, len(cfg.formats), cfg.canaries_per_setting, cfg.max_canary_share, cap=cap if ucol else None)
    cans = cn.make_canaries(cfg.formats, reps, per_setting=cfg.canaries_per_setting, seed=cfg.seed)
    columns = [cfg.text_column, *cfg.label_columns, *([ucol] if ucol else [])]
    canaried = cn.insert_canaries(train[columns], cans, cfg.text_column, label_columns=list(cfg.label_columns),
                                  seed=cfg.seed)
    user_ids: dict[str, str] = {}
    if ucol:
        user_ids = au.canary_user_ids(cans, table[ucol].unique().tolist())
        canaried = au.assign_canary_users(canaried, cans, cfg.text_column, ucol, user_ids)
        trained = cap_records_per_user(canaried, ucol, cap)[0]
        copies = au.copies_trained(trained, ucol, user_ids)
        members, nonmembers, m = au.mia_users(trained, heldout, ucol, cap, cfg.mia_max_records, cfg.seed,
                                              exclude=list(user_ids.values()))
    else:
        trained, copies = canaried, {c.canary_id: c.repetitions for c in cans}
        rng = np.random.default_rng([cfg.seed, 5])
        m = min(len(heldout), len(train), cfg.mia_max_records)
        members = train.iloc[np.sort(rng.choice(len(train), size=m, replace=False))]
        nonmembers = heldout.iloc[np.sort(rng.choice(len(heldout), size=m, replace=False))]

    trained_canaries = sum(copies.values())
    share = trained_canaries / len(trained)
    if cfg.repetitions is None and sorted(reps) != sorted(REPETITIONS):
        warnings.append(f"With {base:,} training records only {', '.join(map(str, reps))} repetition(s) were "
                        f"used so that canaries stay within {cfg.max_canary_share:.0%} of the data; pass "
                        "--repetitions 1,10,100 to force the reference's setting.")
    if share > cfg.max_canary_share:
        warnings.append(f"Canaries are {share:.1%} of the training records: they shape training far more than in "
                        "the reference (0.03 %)" + ("." if ucol else ", and at ε < ∞ a secret repeated many times "
                                                    "is protected only as a group of that many records."))
    if ucol:
        kept = ", ".join(f"×{r}: {min(copies[c.canary_id] for c in cans if c.repetitions == r)}"
                         for r in sorted(set(reps)))
        notes.append(f"Privacy unit: the user ('{ucol}'). Each canary is one new user who writes its secret 1 to "
                     f"{max(reps)} times; training keeps at most --max-records-per-user {cap} records per user, so "
                     f"the copies trained per canary are {kept}. However often a user repeats a secret, it is "
                     "protected as one user: a canary user ranking near 1 at small ε would be a bug.")
        notes.append(f"Membership inference is user-level: whole users were held out, and each user is scored by "
                     f"the mean training loss of their records (at most {cap}); {m} member users against {m} "
                     "held-out users.")
    return _AuditData(train=train, heldout=heldout, canaries=cans, reps=reps, canaried=canaried, trained=trained,
                      copies=copies, user_ids=user_ids, members=members, nonmembers=nonmembers, mia_units=m,
                      dropped_by_cap=dropped)


def run_audit(cfg: AuditConfig, console: Any = None) -> AuditResult:
    """Insert canaries, train at every ε, measure canary ranks, verbatim copies and membership inference.

    With `cfg.resume`, an interrupted audit continues: finished ε runs (and their measurements) are reused, an
    interrupted one continues through `dpsynth run --resume` (or starts over if it stopped before its first
    checkpoint); settings or data that differ from the interrupted audit's are refused.
    """
    from rich.console import Console

    from dpsynth import __version__, outputs
    from dpsynth.data.control_codes import ControlCodes
    from dpsynth.data.reader import read_table_with_sha256
    from dpsynth.data.schema import DatasetSpec, validate_table
    from dpsynth.evaluate import audit_resume as rs
    from dpsynth.evaluate import canaries as cn
    from dpsynth.pipeline import resolve_device
    from dpsynth.pipeline import run as run_pipeline

    console = console or Console(stderr=True)
    t_all = time.perf_counter()
    warnings: list[str] = []
    notes: list[str] = []

    # ---- everything that can be refused, before writing
    _check_out(cfg.out, cfg.overwrite, cfg.resume)
    device = resolve_device(cfg.device)
    data_dir = cfg.out / DATA_DIR
    train_path = data_dir / TRAIN_FILE
    run_cfgs = [_run_config(cfg, train_path, cfg.out / f"eps-{_eps_tag(e)}", e) for e in cfg.epsilons]
    codes = ControlCodes(list(cfg.label_columns))
    spec = DatasetSpec(text_column=cfg.text_column, label_columns=list(cfg.label_columns),
                       user_column=cfg.user_column)
    raw_table, data_sha = read_table_with_sha256(cfg.data)
    table = validate_table(raw_table, spec, drop_empty=cfg.drop_empty).df
    num_candidates = cfg.num_candidates or (_CANDIDATES_GPU if device.type == "cuda" else _CANDIDATES_CPU)
    score_batch = cfg.score_batch_size or (512 if device.type == "cuda" else 64)
    settings = rs.audit_settings(_config_record(cfg), device_resolved=device.type,
                                 num_candidates_resolved=num_candidates)
    fp = rs.check_state(cfg.out, settings, data_sha) if cfg.resume else rs.fingerprint(settings, data_sha)
    ad = _prepare_data(cfg, table, warnings, notes)
    cans = ad.canaries

    # ---- write the settings' fingerprint, then the canaried training file (private) inside OUT
    if cfg.overwrite:
        _clear_out(cfg.out)
    if not cfg.resume:
        cfg.out.mkdir(parents=True, exist_ok=True)
        rs.write_state(cfg.out, settings, data_sha)
    columns = [cfg.text_column, *cfg.label_columns, *([cfg.user_column] if cfg.user_column else [])]
    rs.write_csv_if_changed(ad.canaried, train_path)
    rs.write_csv_if_changed(ad.heldout[columns], data_dir / HELDOUT_FILE)
    prefixes = {c.canary_id: _canary_control_prefix(codes, ad.trained, c, cfg.text_column, list(cfg.label_columns))
                for c in cans}
    candidates = {c.canary_id: cn.candidate_secrets(c.format, c.secret, num_candidates, seed=c.seed,
                                                    exclude=[o.secret for o in cans]) for c in cans}

    runs: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for i, (eps, rcfg) in enumerate(zip(cfg.epsilons, run_cfgs), start=1):
        label = _eps_tag(eps).replace("inf", "∞")
        state = rs.run_state(rcfg.out, rcfg) if cfg.resume else "absent"
        head = f"[bold]audit[/]: run {i} of {len(run_cfgs)} at ε = {label}"
        run = rs.read_measures(rcfg.out, fp) if state == "finished" else None
        if state == "finished":
            console.print(f"{head}: finished before the interruption, reused → {rcfg.out}")
            outputs.remove_checkpoint(rcfg.out)  # a run stopped between run.json and this clean-up
            numbers = rs.finished_run_numbers(rcfg.out)
            origin = "reused"
        else:
            rs.forget_measures(rcfg.out)
            origin = {"absent": "trained", "checkpoint": "resumed", "started": "restarted"}[state]
            rcfg = rcfg.model_copy(update={"resume": state == "checkpoint", "overwrite": state == "started"})
            console.print(head + {"trained": "", "resumed": " (continuing from its checkpoint)",
                                  "restarted": " (starting over: it stopped before its first checkpoint)"}[origin]
                          + f" → {rcfg.out}")
            result = run_pipeline(rcfg, console=console)
            numbers = {"epsilon": result.epsilon, "delta": result.delta, "timings": result.timings,
                       "synthetic_path": result.synthetic_path}
        if run is None:
            run = _measure_run(cfg, ad, codes, rcfg.out, numbers, eps, label, prefixes, candidates, num_candidates,
                               score_batch, device)
            run["training"] = origin
            rs.write_measures(rcfg.out, fp, run)
        run = run | {"training": origin, "run_dir": str(rcfg.out)}
        runs.append(run)
        run_dirs.append(rcfg.out)
    for row in runs[0]["canaries"]:
        if row.get("tokens", 0) > cfg.max_tokens:
            warnings.append(f"Canary {row['canary_id']} takes {row['tokens']} tokens with its control codes, more "
                            f"than --max-tokens {cfg.max_tokens}: its end was cut in training.")
    timings = {"total_s": round(time.perf_counter() - t_all, 3)}

    num_rows = sum(c.repetitions for c in cans)
    trained_rows = sum(ad.copies.values())
    data_info: dict[str, Any] = {
        "records": len(table), "training_records": len(ad.train), "heldout_records": len(ad.heldout),
        "canary_records": num_rows, "canary_share": trained_rows / len(ad.trained),
        "privacy_unit": "user" if cfg.user_column else "record",
        "training_file": str(train_path), "heldout_file": str(data_dir / HELDOUT_FILE),
        "private": "data/ holds the user's records: keep it with the private data"}
    if cfg.user_column:
        data_info |= {"users": int(table[cfg.user_column].nunique()),
                      "training_users": int(ad.train[cfg.user_column].nunique()),
                      "heldout_users": int(ad.heldout[cfg.user_column].nunique()), "canary_users": len(cans),
                      "records_per_user_cap": cfg.max_records_per_user, "canary_records_trained": trained_rows,
                      "records_dropped_by_cap": ad.dropped_by_cap}
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dpsynth_version": __version__,
        "config": _config_record(cfg),
        "data": data_info,
        "settings": {"formats": list(cfg.formats), "repetitions": ad.reps,
                     "repetitions_source": "given" if cfg.repetitions is not None else "auto",
                     "canaries_per_setting": cfg.canaries_per_setting, "num_candidates": num_candidates,
                     "secrets_ranked": num_candidates + 1, "scoring": "total NLL of secret + '.' + EOS after the "
                     "canary's control codes and text prefix (training format)", "device": str(device)},
        "canaries": [c.to_dict() | {"control_codes": prefixes[c.canary_id][1], "copies_trained": ad.copies[c.canary_id]}
                     | ({"user_id": ad.user_ids[c.canary_id]} if ad.user_ids else {}) for c in cans],
        "runs": runs,
        "summary": [r["summary"] for r in runs],
        "notes": notes,
        "warnings": warnings,
        "resume": {"resumed": cfg.resume, "fingerprint": fp, "runs": {r["epsilon_target"]: r["training"]
                                                                      for r in runs}},
        "timings": timings,
    }
    audit_path = cfg.out / AUDIT_FILE
    outputs.write_json_atomic(audit_path, report)
    return AuditResult(report=report, audit_path=audit_path, data_dir=data_dir, run_dirs=run_dirs,
                       sentences=list(report["summary"]), warnings=warnings, notes=notes)


def _measure_run(cfg: AuditConfig, ad: _AuditData, codes: Any, run_dir: Path, numbers: dict[str, Any], eps: float,
                 label: str, prefixes: dict[str, tuple[str, dict[str, str]]], candidates: dict[str, list[str]],
                 num_candidates: int, score_batch: int, device: Any) -> dict[str, Any]:
    """Rank every canary, count verbatim copies and run membership inference on one finished ε run."""
    from dpsynth.data.reader import read_table
    from dpsynth.evaluate import canaries as cn
    from dpsynth.evaluate.leakage import loss_mia_auc
    from dpsynth.evaluate.progress import StepProgress

    t = time.perf_counter()
    loaded = _load_trained(run_dir / outputs.MODEL, device)
    synthetic = read_table(numbers["synthetic_path"])
    syn_texts = synthetic[cfg.text_column].fillna("").astype(str).tolist() \
        if cfg.text_column in synthetic.columns else []
    rows = []
    with StepProgress(cfg.show_progress, len(ad.canaries), f"ranking canaries (ε = {label})") as advance:
        for c in ad.canaries:
            ctrl, _ = prefixes[c.canary_id]
            rank, length = rank_in_training_format(loaded.model, loaded.tokenizer, ctrl, c.prefix, c.secret,
                                                   candidates[c.canary_id], batch_size=score_batch)
            rows.append({"canary_id": c.canary_id, "format": c.format, "repetitions": c.repetitions,
                         "copies_trained": ad.copies[c.canary_id], "rank": rank,
                         "exposure_bits": cn.exposure(rank, num_candidates + 1),
                         "verbatim_count": cn.verbatim_count(c, syn_texts), "tokens": length})
            advance(1)
    t_rank = time.perf_counter() - t
    t = time.perf_counter()
    model, tok = loaded.model, loaded.tokenizer
    loss_in = record_losses(model, tok, _prefixes(codes, ad.members, cfg.label_columns),
                            ad.members[cfg.text_column].tolist(), max_tokens=cfg.max_tokens)
    loss_out = record_losses(model, tok, _prefixes(codes, ad.nonmembers, cfg.label_columns),
                             ad.nonmembers[cfg.text_column].tolist(), max_tokens=cfg.max_tokens)
    if cfg.user_column:
        from dpsynth.evaluate.audit_users import user_scores

        s_in = user_scores(ad.members, loss_in, cfg.user_column)
        s_out = user_scores(ad.nonmembers, loss_out, cfg.user_column)
        auc = loss_mia_auc(s_in, s_out)
        mia = {"auc": auc, "std_error": auc_std_error(auc, len(s_in), len(s_out)), "unit": "user",
               "members": len(s_in), "nonmembers": len(s_out), "member_records": len(ad.members),
               "nonmember_records": len(ad.nonmembers),
               "loss": "per user: mean over the user's records of the mean next-token loss, training format"}
    else:
        auc = loss_mia_auc(loss_in[np.isfinite(loss_in)], loss_out[np.isfinite(loss_out)])
        mia = {"auc": auc, "std_error": auc_std_error(auc, ad.mia_units, ad.mia_units), "unit": "record",
               "members": ad.mia_units, "nonmembers": ad.mia_units, "loss": "mean next-token loss, training format"}
    t_mia = time.perf_counter() - t
    del loaded, model
    run: dict[str, Any] = {
        "epsilon_target": _eps_tag(eps), "epsilon_label": label, "private": math.isfinite(eps),
        "epsilon": numbers["epsilon"] if math.isfinite(numbers["epsilon"]) else None, "delta": numbers["delta"],
        "run_dir": str(run_dir), "synthetic_records": len(syn_texts),
        "canaries": rows, "by_repetitions": _by_repetitions(rows), "membership_inference": mia,
        "timings": {**{k: round(v, 3) for k, v in numbers["timings"].items()}, "rank_s": round(t_rank, 3),
                    "mia_s": round(t_mia, 3)},
    }
    run["summary"] = _summarise_run(run, num_candidates + 1)
    return run


def _prefixes(codes: Any, frame: pd.DataFrame, label_columns: list[str]) -> list[str]:
    if not label_columns:
        return [""] * len(frame)
    return [codes.prefix(r) for r in frame[label_columns].to_dict("records")]


def _load_trained(folder: Path, device: Any) -> Any:
    """The run's fine-tuned model, LoRA merged into the weights (scoring only; faster forward passes)."""
    from dpsynth.evaluate.progress import quiet_transformers
    from dpsynth.models.loading import load_model

    with quiet_transformers():
        loaded = load_model(folder, device=str(device))
    if hasattr(loaded.model, "merge_and_unload"):
        loaded.model = loaded.model.merge_and_unload()
    loaded.model.eval()
    return loaded


def _config_record(cfg: AuditConfig) -> dict[str, Any]:
    """The configuration for audit.json, with ε = ∞ written as "inf" (JSON has no infinity)."""
    d = cfg.model_dump(mode="python")
    d["epsilons"] = [_eps_tag(e) for e in cfg.epsilons]
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
