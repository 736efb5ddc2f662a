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

With a user column (user-level DP) every canary is one new user and membership inference works on users; an
interrupted audit continues with `--resume` (finished ε runs reused, an interrupted one resumed).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ValidationError
from rich.console import Console

from dpsynth import __version__
from dpsynth.commands.run import run
from dpsynth.config import RUN_SETTINGS, RunConfig, describe_validation_error
from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.reader import read_table, read_table_with_sha256
from dpsynth.data.schema import DatasetSpec, validate_table
from dpsynth.errors import DpsynthError
from dpsynth.evaluate import audit_state as rs
from dpsynth.evaluate import canaries as cn
from dpsynth.evaluate.audit_config import AuditConfig, eps_tag, make_audit_config
from dpsynth.evaluate.audit_data import AuditData, canary_control_prefix, prepare_audit_data
from dpsynth.evaluate.audit_scores import auc_std_error, rank_in_training_format, record_losses
from dpsynth.evaluate.audit_users import user_scores
from dpsynth.evaluate.leakage import loss_mia_auc
from dpsynth.models.loading import LoadedModel, load_model
from dpsynth.report.audit import audit_summary_rows, by_repetitions, print_audit_summary, summarise_run
from dpsynth.runtime.device import resolve_device
from dpsynth.runtime.files import check_output_folder, clear_output_folder, read_json, write_json_atomic
from dpsynth.runtime.progress import StepProgress, quiet_transformers
from dpsynth.stages.folder import RunFolder

AUDIT_FILE = "audit.json"
DATA_DIR = "data"
TRAIN_FILE = "train_with_canaries.csv"
HELDOUT_FILE = "heldout.csv"
_CANDIDATES_GPU, _CANDIDATES_CPU = 10_000, 1_000
RunState = Literal["absent", "finished", "checkpoint", "started"]
__all__ = ["AuditConfig", "AuditResult", "make_audit_config", "print_audit_summary", "run_audit"]


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
        return audit_summary_rows(self.report)


@dataclass
class _Setup:
    """What every ε run of the audit shares: the data, canaries, their prompts and candidates, the fingerprint."""

    table: pd.DataFrame
    ad: AuditData
    codes: ControlCodes
    prefixes: dict[str, tuple[str, dict[str, str]]]
    candidates: dict[str, list[str]]
    num_candidates: int
    score_batch: int
    device: Any
    fingerprint: str
    warnings: list[str]
    notes: list[str]


def run_audit(cfg: AuditConfig, console: Console | None = None) -> AuditResult:
    """Insert canaries, train at every ε, measure canary ranks, verbatim copies and membership inference.

    With `cfg.resume`, an interrupted audit continues: finished ε runs (and their measurements) are reused, an
    interrupted one continues through `dpsynth run --resume` (or starts over if it stopped before its first
    checkpoint); settings or data that differ from the interrupted audit's are refused.
    """
    console = console or Console(stderr=True)
    t_all = time.perf_counter()
    _check_out(cfg)
    run_cfgs = [_run_config(cfg, cfg.out / DATA_DIR / TRAIN_FILE, cfg.out / f"eps-{eps_tag(e)}", e)
                for e in cfg.epsilons]
    setup = _set_up(cfg)
    runs = [_audit_one(cfg, setup, eps, rcfg, f"[bold]audit[/]: run {i} of {len(run_cfgs)} at ε = "
                       f"{eps_tag(eps).replace('inf', '∞')}", console)
            for i, (eps, rcfg) in enumerate(zip(cfg.epsilons, run_cfgs), start=1)]
    for row in runs[0]["canaries"]:
        if row.get("tokens", 0) > cfg.max_tokens:
            setup.warnings.append(f"Canary {row['canary_id']} takes {row['tokens']} tokens with its control codes, "
                                  f"more than --max-tokens {cfg.max_tokens}: its end was cut in training.")
    report = _report(cfg, setup, runs, round(time.perf_counter() - t_all, 3))
    audit_path = cfg.out / AUDIT_FILE
    write_json_atomic(audit_path, report)
    return AuditResult(report=report, audit_path=audit_path, data_dir=cfg.out / DATA_DIR,
                       run_dirs=[Path(r["run_dir"]) for r in runs], sentences=list(report["summary"]),
                       warnings=setup.warnings, notes=setup.notes)


def _check_out(cfg: AuditConfig) -> None:
    if cfg.resume:
        if cfg.out.exists() and not cfg.out.is_dir():
            raise DpsynthError(f"--out {cfg.out} is a file, not a folder; choose a folder path")
        if not (cfg.out / rs.STATE_FILE).is_file():
            raise DpsynthError(f"--resume: {cfg.out} holds no interrupted audit to continue (no {rs.STATE_FILE}); "
                               "drop --resume to start one")
        return
    check_output_folder(cfg.out, overwrite=cfg.overwrite, hint="pass --overwrite to replace an earlier audit or "
                                                               "--resume to continue an interrupted one")


def clear_audit_outputs(out: Path) -> None:
    """What --overwrite removes: only what an audit writes (never unrelated files)."""
    clear_output_folder(out, [DATA_DIR, AUDIT_FILE, rs.STATE_FILE] + [p.name for p in out.glob("eps-*") if p.is_dir()])


def _run_config(cfg: AuditConfig, data: Path, out: Path, eps: float) -> RunConfig:
    """The `dpsynth run` of one ε: the audit's run settings as they are, on the canaried training file."""
    try:
        return RunConfig(data=data, out=out, epsilon=eps, **cfg.model_dump(include=set(RUN_SETTINGS)))
    except ValidationError as exc:
        raise DpsynthError(describe_validation_error(exc)) from None


def _set_up(cfg: AuditConfig) -> _Setup:
    """Everything that can be refused, before writing; then the settings' fingerprint and the canaried training
    file (private) inside OUT."""
    warnings: list[str] = []
    notes: list[str] = []
    device = resolve_device(cfg.device)
    codes = ControlCodes(list(cfg.label_columns))
    spec = DatasetSpec(text_column=cfg.text_column, label_columns=list(cfg.label_columns),
                       user_column=cfg.user_column)
    raw_table, data_sha = read_table_with_sha256(cfg.data)
    table = validate_table(raw_table, spec, drop_empty=cfg.drop_empty).df
    num_candidates = cfg.num_candidates or (_CANDIDATES_GPU if device.type == "cuda" else _CANDIDATES_CPU)
    settings = rs.audit_settings(_config_record(cfg), device_resolved=device.type,
                                 num_candidates_resolved=num_candidates)
    fp = rs.check_state(cfg.out, settings, data_sha) if cfg.resume else rs.fingerprint(settings, data_sha)
    ad = prepare_audit_data(cfg, table, warnings, notes)
    if cfg.overwrite:
        clear_audit_outputs(cfg.out)
    if not cfg.resume:
        cfg.out.mkdir(parents=True, exist_ok=True)
        rs.write_state(cfg.out, settings, data_sha)
    columns = [cfg.text_column, *cfg.label_columns, *([cfg.user_column] if cfg.user_column else [])]
    rs.write_csv_if_changed(ad.canaried, cfg.out / DATA_DIR / TRAIN_FILE)
    rs.write_csv_if_changed(ad.heldout[columns], cfg.out / DATA_DIR / HELDOUT_FILE)
    prefixes = {c.canary_id: canary_control_prefix(codes, ad.trained, c, cfg.text_column, list(cfg.label_columns))
                for c in ad.canaries}
    candidates = {c.canary_id: cn.candidate_secrets(c.format, c.secret, num_candidates, seed=c.seed,
                                                    exclude=[o.secret for o in ad.canaries]) for c in ad.canaries}
    return _Setup(table, ad, codes, prefixes, candidates, num_candidates,
                  cfg.score_batch_size or (512 if device.type == "cuda" else 64), device, fp, warnings, notes)


def _run_state(folder: RunFolder, run_cfg: RunConfig) -> RunState:
    """Where the ε run stands: `finished` (run.json and synthetic.csv, made with `run_cfg`'s settings),
    `checkpoint` (interrupted with a training checkpoint: `dpsynth run --resume` continues it), `started`
    (interrupted before any checkpoint: it starts over) or `absent`."""
    if not folder.path.exists():
        return "absent"
    if folder.record.is_file() and folder.synthetic.is_file():
        try:
            record = json.loads(folder.record.read_text())
        except ValueError:
            record = {}
        if rs.comparable(record.get("config", {})) != rs.comparable(run_cfg.model_dump(mode="json")):
            raise DpsynthError(f"--resume: the finished run in {folder.path} was trained with other settings than "
                               "this audit's; pass --overwrite instead of --resume to start the audit over")
        return "finished"
    return "checkpoint" if folder.checkpoint.is_dir() else "started"


def _audit_one(cfg: AuditConfig, setup: _Setup, eps: float, rcfg: RunConfig, head: str,
               console: Console) -> dict[str, Any]:
    """Train (or reuse, or resume) the run of one ε and measure it (or reuse its measurements)."""
    folder = RunFolder(rcfg.out)
    state = _run_state(folder, rcfg) if cfg.resume else "absent"
    if state == "finished":
        console.print(f"{head}: finished before the interruption, reused → {rcfg.out}")
        folder.remove_checkpoint()  # a run stopped between run.json and this clean-up
        record = read_json(folder.record, "the run record")
        eps_run = record.get("privacy", {}).get("epsilon")
        numbers = {"epsilon": math.inf if eps_run is None else float(eps_run),
                   "delta": record.get("privacy", {}).get("delta"), "timings": dict(record.get("timings", {})),
                   "synthetic_path": folder.synthetic}
        origin = "reused"
        measured = rs.read_measures(rcfg.out, setup.fingerprint)
    else:
        rs.forget_measures(rcfg.out)
        origin = {"absent": "trained", "checkpoint": "resumed", "started": "restarted"}[state]
        rcfg = rcfg.model_copy(update={"resume": state == "checkpoint", "overwrite": state == "started"})
        console.print(head + {"trained": "", "resumed": " (continuing from its checkpoint)",
                              "restarted": " (starting over: it stopped before its first checkpoint)"}[origin]
                      + f" → {rcfg.out}")
        result = run(rcfg, console=console)
        numbers = {"epsilon": result.epsilon, "delta": result.delta, "timings": result.timings,
                   "synthetic_path": result.synthetic_path}
        measured = None
    if measured is None:
        measured = _measure_run(cfg, setup, rcfg.out, numbers, eps) | {"training": origin}
        rs.write_measures(rcfg.out, setup.fingerprint, measured)
    return measured | {"training": origin, "run_dir": str(rcfg.out)}


def _measure_run(cfg: AuditConfig, setup: _Setup, run_dir: Path, numbers: dict[str, Any],
                 eps: float) -> dict[str, Any]:
    """Rank every canary, count verbatim copies and run membership inference on one finished ε run."""
    label = eps_tag(eps).replace("inf", "∞")
    loaded = _load_trained(RunFolder(run_dir).model, setup.device)
    synthetic = read_table(numbers["synthetic_path"])
    syn_texts = synthetic[cfg.text_column].fillna("").astype(str).tolist() \
        if cfg.text_column in synthetic.columns else []
    t = time.perf_counter()
    rows = _rank_canaries(cfg, setup, loaded, syn_texts, label)
    t_rank = time.perf_counter() - t
    t = time.perf_counter()
    mia = _membership_inference(cfg, setup, loaded)
    t_mia = time.perf_counter() - t
    result: dict[str, Any] = {
        "epsilon_target": eps_tag(eps), "epsilon_label": label, "private": math.isfinite(eps),
        "epsilon": numbers["epsilon"] if math.isfinite(numbers["epsilon"]) else None, "delta": numbers["delta"],
        "run_dir": str(run_dir), "synthetic_records": len(syn_texts),
        "canaries": rows, "by_repetitions": by_repetitions(rows), "membership_inference": mia,
        "timings": {**{k: round(v, 3) for k, v in numbers["timings"].items()}, "rank_s": round(t_rank, 3),
                    "mia_s": round(t_mia, 3)},
    }
    result["summary"] = summarise_run(result, setup.num_candidates + 1)
    return result


def _rank_canaries(cfg: AuditConfig, setup: _Setup, loaded: LoadedModel, syn_texts: list[str],
                   label: str) -> list[dict[str, Any]]:
    rows = []
    with StepProgress(cfg.show_progress, len(setup.ad.canaries), f"ranking canaries (ε = {label})") as advance:
        for c in setup.ad.canaries:
            ctrl, _ = setup.prefixes[c.canary_id]
            rank, length = rank_in_training_format(loaded.model, loaded.tokenizer, ctrl, c.prefix, c.secret,
                                                   setup.candidates[c.canary_id], batch_size=setup.score_batch)
            rows.append({"canary_id": c.canary_id, "format": c.format, "repetitions": c.repetitions,
                         "copies_trained": setup.ad.copies[c.canary_id], "rank": rank,
                         "exposure_bits": cn.exposure(rank, setup.num_candidates + 1),
                         "verbatim_count": cn.verbatim_count(c, syn_texts), "tokens": length})
            advance(1)
    return rows


def _membership_inference(cfg: AuditConfig, setup: _Setup, loaded: LoadedModel) -> dict[str, Any]:
    """Loss attack: training records (or users) against held-out ones, in the training format."""
    ad, model, tok = setup.ad, loaded.model, loaded.tokenizer
    loss_in = record_losses(model, tok, _prefixes(setup.codes, ad.members, cfg.label_columns),
                            ad.members[cfg.text_column].tolist(), max_tokens=cfg.max_tokens)
    loss_out = record_losses(model, tok, _prefixes(setup.codes, ad.nonmembers, cfg.label_columns),
                             ad.nonmembers[cfg.text_column].tolist(), max_tokens=cfg.max_tokens)
    if cfg.user_column:
        s_in = user_scores(ad.members, loss_in, cfg.user_column)
        s_out = user_scores(ad.nonmembers, loss_out, cfg.user_column)
        auc = loss_mia_auc(s_in, s_out)
        return {"auc": auc, "std_error": auc_std_error(auc, len(s_in), len(s_out)), "unit": "user",
                "members": len(s_in), "nonmembers": len(s_out), "member_records": len(ad.members),
                "nonmember_records": len(ad.nonmembers),
                "loss": "per user: mean over the user's records of the mean next-token loss, training format"}
    auc = loss_mia_auc(loss_in[np.isfinite(loss_in)], loss_out[np.isfinite(loss_out)])
    return {"auc": auc, "std_error": auc_std_error(auc, ad.mia_units, ad.mia_units), "unit": "record",
            "members": ad.mia_units, "nonmembers": ad.mia_units, "loss": "mean next-token loss, training format"}


def _report(cfg: AuditConfig, setup: _Setup, runs: list[dict[str, Any]], total_s: float) -> dict[str, Any]:
    """audit.json: settings, canaries (made-up secrets), every run's measures, notes and warnings."""
    ad, table = setup.ad, setup.table
    data_dir = cfg.out / DATA_DIR
    trained_rows = sum(ad.copies.values())
    data_info: dict[str, Any] = {
        "records": len(table), "training_records": len(ad.train), "heldout_records": len(ad.heldout),
        "canary_records": sum(c.repetitions for c in ad.canaries), "canary_share": trained_rows / len(ad.trained),
        "privacy_unit": "user" if cfg.user_column else "record",
        "training_file": str(data_dir / TRAIN_FILE), "heldout_file": str(data_dir / HELDOUT_FILE),
        "private": "data/ holds the user's records: keep it with the private data"}
    if cfg.user_column:
        data_info |= {"users": int(table[cfg.user_column].nunique()),
                      "training_users": int(ad.train[cfg.user_column].nunique()),
                      "heldout_users": int(ad.heldout[cfg.user_column].nunique()), "canary_users": len(ad.canaries),
                      "records_per_user_cap": cfg.max_records_per_user, "canary_records_trained": trained_rows,
                      "records_dropped_by_cap": ad.dropped_by_cap}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dpsynth_version": __version__,
        "config": _config_record(cfg),
        "data": data_info,
        "settings": {"formats": list(cfg.formats), "repetitions": ad.reps,
                     "repetitions_source": "given" if cfg.repetitions is not None else "auto",
                     "canaries_per_setting": cfg.canaries_per_setting, "num_candidates": setup.num_candidates,
                     "secrets_ranked": setup.num_candidates + 1, "scoring": "total NLL of secret + '.' + EOS after "
                     "the canary's control codes and text prefix (training format)", "device": str(setup.device)},
        "canaries": [c.to_dict() | {"control_codes": setup.prefixes[c.canary_id][1],
                                    "copies_trained": ad.copies[c.canary_id]}
                     | ({"user_id": ad.user_ids[c.canary_id]} if ad.user_ids else {}) for c in ad.canaries],
        "runs": runs,
        "summary": [r["summary"] for r in runs],
        "notes": setup.notes,
        "warnings": setup.warnings,
        "resume": {"resumed": cfg.resume, "fingerprint": setup.fingerprint,
                   "runs": {r["epsilon_target"]: r["training"] for r in runs}},
        "timings": {"total_s": total_s},
    }


def _prefixes(codes: ControlCodes, frame: pd.DataFrame, label_columns: list[str]) -> list[str]:
    if not label_columns:
        return [""] * len(frame)
    return [codes.prefix(r) for r in frame[label_columns].to_dict("records")]


def _load_trained(folder: Path, device: Any) -> LoadedModel:
    """The run's fine-tuned model, LoRA merged into the weights (scoring only; faster forward passes)."""
    with quiet_transformers():
        loaded = load_model(folder, device=str(device))
    if hasattr(loaded.model, "merge_and_unload"):
        loaded.model = loaded.model.merge_and_unload()
    loaded.model.eval()
    return loaded


def _config_record(cfg: AuditConfig) -> dict[str, Any]:
    """The configuration for audit.json, with ε = ∞ written as "inf" (JSON has no infinity)."""
    d = cfg.model_dump(mode="python")
    d["epsilons"] = [eps_tag(e) for e in cfg.epsilons]
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
