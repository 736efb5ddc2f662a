"""Utility benchmark — the number dpsynth is judged on: does a classifier trained on synthetic text work on real text?

A corpus (`--corpus`, bench/corpora.py: Rotten Tomatoes by default, airline tweets, 20 Newsgroups, Reuters R8) is
subsampled and split, stratified by its label combination, into a private training part and a held-out real test
part. The full pipeline (`dpsynth.run`) then makes synthetic data from the training part once
per ε (default ∞ and 4), and the fast downstream classifier (TF-IDF + logistic regression) is trained on
(a) the real training part, (b) synthetic at ε = ∞, (c) synthetic at ε = 4, and scored on the real test part.

Goals: (c) ≥ 95 % of (b) and (b) ≥ 90 % of (a), in accuracy, for every label column. `bench/utility_grid.py`
runs this over corpora, sizes, ε and seeds.

Two diagnostics come for free (no extra training) and say *where* utility is lost:
* `real_same_size`: the classifier on a real subsample as large as the synthetic set, so "fewer training rows"
  is told apart from "worse rows";
* `label_agreement`: the real-trained classifier applied to the synthetic texts, i.e. how often the generator's
  text actually carries the label its control code asked for;
and every accuracy also comes as a lift over the majority-class baseline (a raw accuracy ratio flatters a
classifier that is barely above chance).

Run (repository root):
    .venv/bin/python bench/utility.py --threads 1 --train-records 800 --test-records 1000 --epochs 1 \\
        --num-samples 400 --max-tokens 64 --max-new-tokens 40      # 2-core CPU, bundled SmolLM2, LoRA: ~12 min
    .venv/bin/python bench/utility.py --device cuda --train-records 10000 --test-records 2000 \\
        --num-samples 10000                                         # GPU: pipeline defaults (4 epochs with DP)
    .venv/bin/python bench/utility.py --quick                       # tiny random model, seconds (smoke test)
Writes bench/out/utility.json (and the runs under bench/out/utility_runs/) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine_info, now_iso, package_versions
from bench.corpora import CORPORA, Corpus, load_corpus

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "utility.json"
DEFAULT_RUNS = BENCH_DIR / "out" / "utility_runs"
TEXT_COLUMN = "text"
GOAL_EPS_VS_INF = 0.95
GOAL_INF_VS_REAL = 0.90
WEAK_LIFT = 0.5  # below this share of real's gain over the majority class, ratios between synthetic sets are noise
PRIVATE_REFERENCE_EPSILON = 4.0  # the ε of the headline ratio `ratio_eps4_vs_inf`


@dataclasses.dataclass
class UtilityBenchConfig:
    """Every setting of one benchmark run; all of it is written to the JSON next to the results."""

    corpus: str = "rotten_tomatoes"  # bench/corpora.py
    train_records: int = 2000
    test_records: int = 1000
    num_samples: int | None = None  # synthetic rows per ε; None: as many as train records
    epsilons: tuple[float, ...] = (math.inf, 4.0)
    epochs: float | None = None  # None: the pipeline's defaults (4 with DP, 2 without)
    finetune: str = "lora"
    lora_rank: int | None = None  # None: the pipeline's default
    lora_targets: str | None = None  # comma-separated projection names; None: the pipeline's default
    loss_on_prefix: bool | None = None  # None: the pipeline's default
    model: str | None = None  # None: bundled SmolLM2-135M-Instruct
    device: str = "auto"
    max_tokens: int | None = None  # None: the corpus's (64 for short texts, 128 for long ones)
    max_new_tokens: int | None = None  # None: = max_tokens
    batch_size: int | None = None  # None: the pipeline's defaults (N/8 ≤ 256 with DP, 32 without)
    learning_rate: float | None = None  # None: the pipeline's defaults per finetune mode and privacy
    lr_schedule: str | None = None  # None: the pipeline's default
    physical_batch_size: int = 8
    sample_batch_size: int = 64
    classifier: str = "tfidf"
    seed: int = 0  # training, noise and sampling seed of every run
    data_seed: int = 0  # which demo records, and the train/test split
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    runs_dir: Path = DEFAULT_RUNS
    quick: bool = False  # tiny random model instead of `model` (smoke test)

    @classmethod
    def quick_defaults(cls, runs_dir: Path = DEFAULT_RUNS) -> UtilityBenchConfig:
        """Seconds on a CPU: a tiny random Llama, 60 records, one epoch, a handful of samples."""
        return cls(train_records=48, test_records=12, num_samples=24, epochs=1.0, device="cpu", max_tokens=32,
                   max_new_tokens=24, physical_batch_size=8, sample_batch_size=24, runs_dir=runs_dir, quick=True)


def epsilon_tag(eps: float) -> str:
    """'inf', '4', '0.5': the name of an ε in JSON keys and run folders."""
    return "inf" if math.isinf(eps) else f"{eps:g}"


def parse_epsilons(text: str) -> tuple[float, ...]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        value = math.inf if part in {"inf", "infinity"} else float(part)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"every ε must be positive, got {part}")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("give at least one ε, e.g. inf,4")
    return tuple(values)


# ---------------------------------------------------------------- data
def prepare_data(cfg: UtilityBenchConfig, corpus: Corpus, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A stratified subset of the corpus → (private train, real test) CSVs in `folder`; both frames and a summary.

    Stratified by the joint label combination, so both parts keep the corpus's label mix."""
    from dpsynth.data.split import largest_remainder, split_train_test

    cols = list(corpus.label_columns)
    total = cfg.train_records + cfg.test_records
    df = corpus.frame
    if len(df) < total:
        raise SystemExit(f"{corpus.name} has only {len(df)} records; ask for fewer train + test records")
    key = df[cols].agg(" | ".join, axis=1).to_numpy()
    rng = np.random.default_rng(cfg.data_seed)
    values = sorted(set(key))
    groups = [np.flatnonzero(key == v) for v in values]
    quotas = largest_remainder([len(g) for g in groups], total)
    chosen = np.concatenate([rng.choice(g, size=q, replace=False) for g, q in zip(groups, quotas)])
    df = df.iloc[rng.permutation(chosen)].reset_index(drop=True)
    df["_stratum"] = df[cols].agg(" | ".join, axis=1)
    train, test = split_train_test(df, test_fraction=cfg.test_records / total, seed=cfg.data_seed,
                                   stratify="_stratum")
    train, test = train.drop(columns="_stratum"), test.drop(columns="_stratum")
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    info = {"source": corpus.source, "corpus": corpus.name, "text_column": TEXT_COLUMN, "label_columns": cols,
            "train_records": len(train), "test_records": len(test),
            "mean_words": round(float(train[TEXT_COLUMN].str.split().str.len().mean()), 1),
            "train_label_counts": {c: _counts(train[c]) for c in cols},
            "test_label_counts": {c: _counts(test[c]) for c in cols},
            "overlap_train_test": len(set(train[TEXT_COLUMN]) & set(test[TEXT_COLUMN]))}
    return train, test, info


def _counts(series: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.astype(str).value_counts().sort_index().items()}


# ---------------------------------------------------------------- one synthetic run per ε
def _given(cfg: UtilityBenchConfig, *names: str) -> dict[str, Any]:
    """The named settings the user gave (not None); the others keep the pipeline's defaults."""
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n) is not None}


def run_pipeline(cfg: UtilityBenchConfig, corpus: Corpus, eps: float, train_csv: Path, model: str | None,
                 console: Any) -> dict[str, Any]:
    """`dpsynth.run` on the private train part at one ε; returns the run's settings, privacy and timings."""
    import dpsynth

    run_dir = cfg.runs_dir / f"eps_{epsilon_tag(eps)}"
    # The corpus's label values are public: declared, as a user would, so every label is sampled however small
    # the run (values read from the data would pass through the DP histogram's threshold).
    label_values = cfg.runs_dir / "label_values.json"
    label_values.parent.mkdir(parents=True, exist_ok=True)
    label_values.write_text(json.dumps(corpus.label_values()))
    config = dpsynth.RunConfig(
        data=train_csv, text_column=TEXT_COLUMN, label_columns=list(corpus.label_columns), out=run_dir,
        overwrite=True,
        model=model, finetune=cfg.finetune, epsilon=eps, **_given(cfg, "lora_rank", "lora_targets", "loss_on_prefix"),
        epochs=cfg.epochs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_schedule=cfg.lr_schedule, physical_batch_size=cfg.physical_batch_size,
        max_tokens=_max_tokens(cfg, corpus),
        max_new_tokens=cfg.max_new_tokens, num_samples=cfg.num_samples or cfg.train_records,
        sample_batch_size=cfg.sample_batch_size, seed=cfg.seed, device=cfg.device, label_values=label_values,
        secure_rng=False)  # seeded noise and batches: a benchmark must be repeatable (its models are not published)
    start = time.perf_counter()
    result = dpsynth.run(config, console=console)
    wall = time.perf_counter() - start
    record = json.loads(result.run_path.read_text(encoding="utf-8"))
    training, sampling, plan = record["training"], record["sampling"], record["privacy"]["plan"]
    steps = training.get("steps") or 0
    return {
        "epsilon": None if math.isinf(eps) else eps, "run_dir": str(run_dir),
        "synthetic_path": str(result.synthetic_path), "device": record["device"], "precision": record["precision"],
        "epsilon_spent": None if math.isinf(result.epsilon) else result.epsilon, "delta": result.delta,
        "noise_multiplier": training.get("noise_multiplier"),
        "label_noise_multiplier": (record.get("label_distribution") or {}).get("noise_multiplier"),
        "steps": steps, "expected_batch_size": plan["expected_batch_size"], "sample_rate": plan["sample_rate"],
        "epochs": config.resolved_epochs(), "learning_rate": training.get("learning_rate"),
        "lr_schedule": training.get("lr_schedule", "constant"),
        "train_step_s": training["seconds"] / steps if steps else None,
        "synthetic_rows": result.num_samples, "sampling": _sampling_summary(sampling),
        "timings_s": _timings(result.timings, wall),
    }


def _max_tokens(cfg: UtilityBenchConfig, corpus: Corpus) -> int:
    return cfg.max_tokens or corpus.max_tokens


def _timings(timings: dict[str, float], wall: float) -> dict[str, float]:
    """The pipeline's stage times plus `other_s`: privacy calibration, saving the model, the ledger."""
    staged = sum(v for k, v in timings.items() if k != "total_s")
    return {k: round(v, 2) for k, v in timings.items()} | {
        "other_s": round(max(0.0, timings.get("total_s", wall) - staged), 2), "wall_s": round(wall, 2)}


def _sampling_summary(sampling: dict[str, Any]) -> dict[str, Any]:
    keep = ("requested", "rows_written", "dropped_empty", "dropped_duplicates", "seconds", "tokens_per_s",
            "new_tokens", "records_per_s", "batch_size", "backend")
    return {k: sampling[k] for k in keep if k in sampling}


# ---------------------------------------------------------------- scoring
def score_sets(cfg: UtilityBenchConfig, label_columns: Sequence[str], train: Any, test: Any,
               synthetic: dict[str, Path]) -> dict[str, Any]:
    """Every classifier score: real train, real train at synthetic size, and each synthetic set; per label column."""
    from dpsynth.evaluate.tables import load_text_table, to_text_table
    from dpsynth.evaluate.utility import classifier_score

    def score(train_tab: Any, test_tab: Any, col: str) -> dict[str, Any]:
        return classifier_score(cfg.classifier, train_tab.texts, train_tab.labels[col], test_tab.texts,
                                test_tab.labels[col], seed=cfg.seed).to_dict()

    cols = list(label_columns)
    real_train = to_text_table(train, "train", TEXT_COLUMN, cols)
    real_test = to_text_table(test, "real", TEXT_COLUMN, cols)
    out: dict[str, Any] = {"real": {"labels": {c: score(real_train, real_test, c) for c in cols}}}
    for name, path in synthetic.items():
        entry: dict[str, Any] = {"labels": {}}
        try:
            syn = load_text_table(path, "synthetic", TEXT_COLUMN, cols)
        except Exception as exc:  # e.g. every synthetic text empty: recorded, the other sets still count
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        for col in cols:
            entry["labels"][col] = score(syn, real_test, col)
            # the real-trained classifier on the synthetic texts: does the text carry the label it was prompted with?
            entry["labels"][col]["label_agreement"] = score(real_train, syn, col)["accuracy"]
        entry["synthetic_rows_scored"] = len(syn)
        same = _subsample(train, len(syn), cfg.data_seed, cols)
        entry["real_same_size"] = {c: score(to_text_table(same, "train", TEXT_COLUMN, cols), real_test, c)
                                   for c in cols}
        out[name] = entry
    return out


def _subsample(frame: Any, n: int, seed: int, label_columns: Sequence[str]) -> Any:
    """A stratified subsample of the real train part with n rows (the whole part if n ≥ its size)."""
    from dpsynth.data.split import split_train_test

    if n >= len(frame) or n < 2:
        return frame
    _, part = split_train_test(frame, test_fraction=n / len(frame), seed=seed + 1, stratify=label_columns[0])
    return part


def lift(acc: float | None, ref: float | None, majority: float) -> float | None:
    """(acc − majority) / (ref − majority): the share of the reference's gain over always-predict-the-majority."""
    if acc is None or ref is None or ref - majority <= 1e-12:
        return None
    return (acc - majority) / (ref - majority)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarise(scores: dict[str, Any], epsilons: Sequence[float], label_columns: Sequence[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 tables (set → label → value), the ratios per label and their means, the goals."""
    sets = ["real"] + [f"eps_{epsilon_tag(e)}" for e in epsilons]
    acc = {s: {c: _get(scores, s, c, "accuracy") for c in label_columns} for s in sets}
    f1 = {s: {c: _get(scores, s, c, "macro_f1") for c in label_columns} for s in sets}
    majority = {c: scores["real"]["labels"][c]["majority_accuracy"] for c in label_columns}
    per_label: dict[str, dict[str, float | None]] = {}
    for c in label_columns:
        r: dict[str, float | None] = {}
        inf_acc = acc.get("eps_inf", {}).get(c)
        if "eps_inf" in acc:
            r["inf_vs_real"] = ratio(inf_acc, acc["real"][c])
            r["lift_inf_vs_real"] = lift(inf_acc, acc["real"][c], majority[c])
        for e in epsilons:
            if math.isfinite(e):
                tag = epsilon_tag(e)
                r[f"eps{tag}_vs_real"] = ratio(acc[f"eps_{tag}"][c], acc["real"][c])
                if "eps_inf" in acc:
                    r[f"eps{tag}_vs_inf"] = ratio(acc[f"eps_{tag}"][c], inf_acc)
                    r[f"lift_eps{tag}_vs_inf"] = lift(acc[f"eps_{tag}"][c], inf_acc, majority[c])
        per_label[c] = r
    head = f"eps{epsilon_tag(PRIVATE_REFERENCE_EPSILON)}_vs_inf"
    ratio_eps = _mean([per_label[c].get(head) for c in label_columns])
    ratio_inf = _mean([per_label[c].get("inf_vs_real") for c in label_columns])
    return {
        "accuracy": acc, "macro_f1": f1, "majority_accuracy": majority, "ratios_per_label": per_label,
        "ratio_eps4_vs_inf": ratio_eps, "ratio_inf_vs_real": ratio_inf,
        "goals": {"ratio_eps4_vs_inf_min": GOAL_EPS_VS_INF, "ratio_inf_vs_real_min": GOAL_INF_VS_REAL,
                  "eps4_vs_inf_met": None if ratio_eps is None else all(
                      (per_label[c].get(head) or 0) >= GOAL_EPS_VS_INF for c in label_columns),
                  "inf_vs_real_met": None if ratio_inf is None else all(
                      (per_label[c].get("inf_vs_real") or 0) >= GOAL_INF_VS_REAL for c in label_columns)},
    }


def _get(scores: dict[str, Any], s: str, c: str, key: str) -> float | None:
    return ((scores.get(s) or {}).get("labels") or {}).get(c, {}).get(key)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


# ---------------------------------------------------------------- the benchmark
def run_benchmark(cfg: UtilityBenchConfig, out: Path | None = DEFAULT_OUT, *, quiet: bool = False) -> dict[str, Any]:
    """Data → one pipeline run per ε → classifier scores → JSON at `out` (also returned)."""
    import torch
    from rich.console import Console

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    console = Console(file=io.StringIO()) if quiet else Console(stderr=True)
    stages: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    corpus = load_corpus(cfg.corpus)
    train, test, data_info = prepare_data(cfg, corpus, cfg.runs_dir / "data")
    model = cfg.model
    if cfg.quick:
        from dpsynth.models.tiny import save_tiny_model_folder

        model = str(save_tiny_model_folder(cfg.runs_dir / "tiny_model", kind="llama", seed=cfg.seed))
    stages["data_s"] = time.perf_counter() - t

    runs: dict[str, Any] = {}
    for eps in cfg.epsilons:
        name = f"eps_{epsilon_tag(eps)}"
        t = time.perf_counter()
        try:
            runs[name] = run_pipeline(cfg, corpus, eps, cfg.runs_dir / "data" / "train.csv", model, console)
        except Exception as exc:  # one failed ε is recorded; the others still run and get scored
            runs[name] = {"epsilon": None if math.isinf(eps) else eps,
                          "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        stages[f"{name}_s"] = time.perf_counter() - t

    t = time.perf_counter()
    synthetic = {n: Path(r["synthetic_path"]) for n, r in runs.items() if "error" not in r}
    scores = score_sets(cfg, corpus.label_columns, train, test, synthetic)
    for n, r in runs.items():
        if "error" in r:
            scores[n] = {"error": r["error"]}
    stages["classify_s"] = time.perf_counter() - t
    stages["total_s"] = time.perf_counter() - t_all

    device = next((r["device"] for r in runs.values() if "device" in r), cfg.device)
    settings = dataclasses.asdict(cfg) | {
        "runs_dir": str(cfg.runs_dir), "epsilons": [epsilon_tag(e) for e in cfg.epsilons],
        "model": "tiny random llama (dpsynth.models.tiny)" if cfg.quick else (cfg.model or "bundled SmolLM2-135M"),
        "num_samples": cfg.num_samples or cfg.train_records,
        "max_tokens": _max_tokens(cfg, corpus),
        "max_new_tokens": cfg.max_new_tokens or _max_tokens(cfg, corpus), "torch_threads": torch.get_num_threads(),
        "seeds": {"run": cfg.seed, "data": cfg.data_seed}, "device_used": device,
    }
    summary: dict[str, Any] = {
        "benchmark": "utility", "created": now_iso(), "settings": settings, "data": data_info,
        "machine": machine_info(device), "versions": package_versions(("torch", "transformers", "peft",
                                                                        "scikit-learn")),
        **summarise(scores, cfg.epsilons, corpus.label_columns),
        "scores": scores, "runs": runs, "wall_s": {k: round(v, 2) for k, v in stages.items()},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def render_table(summary: dict[str, Any]) -> str:
    """A plain-text table: per label column and training set, accuracy, macro-F1 and the diagnostics."""
    s = summary["settings"]
    lines = [f"utility benchmark on {summary['data'].get('corpus', 'rotten_tomatoes')}: "
             f"{summary['data']['train_records']} train / {summary['data']['test_records']} test "
             f"records, model {s['model']}, {s['finetune']}, epochs {s['epochs'] or 'default'}, "
             f"{s['num_samples']} samples, device {s['device_used']}, total {summary['wall_s']['total_s']:.0f} s"]
    header = f"  {'label':<12} {'trained on':<14} {'accuracy':>9} {'macro-F1':>9} {'rows':>6} " \
             f"{'same-size real':>15} {'label agree':>12} {'train s':>8} {'sample s':>9}"
    lines.append(header)
    for col in summary["data"]["label_columns"]:
        for name, entry in summary["scores"].items():
            if "error" in entry:
                lines.append(f"  {col:<12} {name:<14} error: {entry['error'][:70]}")
                continue
            sc = entry["labels"][col]
            same = (entry.get("real_same_size") or {}).get(col, {}).get("accuracy")
            run = summary["runs"].get(name, {})
            t = run.get("timings_s", {})
            lines.append(f"  {col:<12} {name:<14} {_fmt(sc['accuracy']):>9} {_fmt(sc['macro_f1']):>9} "
                         f"{sc['num_train']:>6} {_fmt(same):>15} {_fmt(sc.get('label_agreement')):>12} "
                         f"{t.get('train_s', 0):>8.0f} {t.get('sample_s', 0):>9.0f}")
        lines.append(f"  {col:<12} {'(majority)':<14} {_fmt(summary['majority_accuracy'][col]):>9}")
    goals = summary["goals"]
    lines.append(f"  ratio ε=4 / ε=∞   {_fmt(summary['ratio_eps4_vs_inf'], True):>8}  (goal ≥ "
                 f"{goals['ratio_eps4_vs_inf_min']:.0%}: {'met' if goals['eps4_vs_inf_met'] else 'missed'})")
    lines.append(f"  ratio ε=∞ / real  {_fmt(summary['ratio_inf_vs_real'], True):>8}  (goal ≥ "
                 f"{goals['ratio_inf_vs_real_min']:.0%}: {'met' if goals['inf_vs_real_met'] else 'missed'})")
    for col, r in summary["ratios_per_label"].items():
        lifts = ", ".join(f"{k} {_fmt(v, True)}" for k, v in r.items() if k.startswith("lift"))
        if lifts:
            lines.append(f"  {col}: gain over majority kept: {lifts}")
        inf_lift = r.get("lift_inf_vs_real")
        if inf_lift is not None and inf_lift < WEAK_LIFT:
            lines.append(f"  {col}: ε=∞ keeps under {WEAK_LIFT:.0%} of real's gain over the majority class, so the "
                         "ε=4 / ε=∞ ratio compares two near-chance classifiers and says little")
    return "\n".join(lines)


def build_config(a: argparse.Namespace) -> UtilityBenchConfig:
    """Defaults (or the --quick defaults), then every flag the user gave."""
    cfg = UtilityBenchConfig.quick_defaults() if a.quick else UtilityBenchConfig()
    given = {k: v for k, v in vars(a).items() if v is not None and k not in {"quick", "out", "epsilon", "out_dir"}}
    cfg = dataclasses.replace(cfg, **given)
    if a.epsilon is not None:
        cfg = dataclasses.replace(cfg, epsilons=a.epsilon)
    if a.out_dir is not None:
        cfg = dataclasses.replace(cfg, runs_dir=a.out_dir)
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=tuple(CORPORA), help="bench/corpora.py (default rotten_tomatoes)")
    p.add_argument("--train-records", type=int, help="private training records (default 2000)")
    p.add_argument("--test-records", type=int, help="real held-out test records (default 1000)")
    p.add_argument("--num-samples", type=int, help="synthetic records per ε (default: = train records)")
    p.add_argument("--epochs", type=float, help="training epochs (default: the pipeline's, 4 with DP / 2 without)")
    p.add_argument("--epsilon", type=parse_epsilons, help="comma-separated ε list (default inf,4)")
    p.add_argument("--finetune", choices=("lora", "full"))
    p.add_argument("--lora-rank", type=int, help="LoRA rank (default: the pipeline's)")
    p.add_argument("--lora-targets", help="comma-separated LoRA projection names (default: the pipeline's)")
    p.add_argument("--loss-on-prefix", action=argparse.BooleanOptionalAction,
                   help="train on the control-code tokens too (default: the pipeline's)")
    p.add_argument("--model", help="local model folder (default: bundled SmolLM2-135M)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-tokens", type=int, help="training length in tokens (default: the corpus's, 64 or 128)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per synthetic record (default: --max-tokens)")
    p.add_argument("--batch-size", type=int, help="expected logical batch (default: the pipeline's)")
    p.add_argument("--learning-rate", type=float, help="learning rate (default: the pipeline's)")
    p.add_argument("--lr-schedule", choices=("constant", "linear"), help="LR schedule (default: the pipeline's)")
    p.add_argument("--physical-batch-size", type=int, help="examples per forward pass (default 8)")
    p.add_argument("--sample-batch-size", type=int, help="prompts per generation batch (default 64)")
    p.add_argument("--classifier", choices=("tfidf", "transformer"), help="downstream classifier (default tfidf)")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-seed", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--out-dir", type=Path, help=f"folder for the runs (default {DEFAULT_RUNS})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default bench/out/utility.json)")
    p.add_argument("--quick", action="store_true", help="tiny random model, 60 records: a smoke test in seconds")
    a = p.parse_args(argv)
    cfg = build_config(a)
    summary = run_benchmark(cfg, a.out)
    print(render_table(summary))
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
