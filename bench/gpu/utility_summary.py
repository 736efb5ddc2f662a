"""Condense utility_gpu.sh's runs (one bench/utility.py JSON per fine-tuning mode and ε) into one short table.

Each JSON holds one ε, so the paper's ratios are formed across files here: per mode, (c)/(b) = accuracy at ε=4 over
accuracy at ε=∞, and (b)/(a) = accuracy at ε=∞ over the real-data classifier, plus full over LoRA at the same ε
(issue 3: which mode trains best under DP). Printed last, so the device tool's output tail carries it, and written
as summary_utility.md next to the JSON files.

Usage: python bench/gpu/utility_summary.py OUT_DIR     (reads OUT_DIR/utility_<mode>_eps<ε>.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MODES = ("lora", "full")
EPSILONS = ("4", "inf")  # the JSON key part: eps_4, eps_inf


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def load_runs(out: Path) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(mode, ε tag) → that run's JSON, None where the file is missing (the step was skipped or timed out)."""
    return {(m, e): _load(out / f"utility_{m}_eps{e}.json") for m in MODES for e in EPSILONS}


def run_row(doc: dict[str, Any], eps: str, col: str) -> dict[str, Any]:
    """Accuracy and diagnostics of one synthetic set (or its error) for one label column."""
    score = doc.get("scores", {}).get(f"eps_{eps}", {})
    run = doc.get("runs", {}).get(f"eps_{eps}", {})
    if "error" in score or "error" in run:
        return {"error": str(score.get("error") or run.get("error"))}
    lab = score.get("labels", {}).get(col, {})
    t = run.get("timings_s", {})
    return {"accuracy": lab.get("accuracy"), "macro_f1": lab.get("macro_f1"), "agree": lab.get("label_agreement"),
            "rows": lab.get("num_train"), "steps": run.get("steps"), "sigma": run.get("noise_multiplier"),
            "eps_spent": run.get("epsilon_spent"), "precision": run.get("precision"),
            "train_s": t.get("train_s"), "sample_s": t.get("sample_s"), "wall_s": doc.get("wall_s", {}).get("total_s")}


def render(out: Path) -> str:
    runs = load_runs(out)
    docs = [d for d in runs.values() if d]
    if not docs:
        return f"no utility_*.json in {out}: no utility run finished (see utility_gpu.log)"
    first = docs[0]
    cols = first.get("data", {}).get("label_columns", ["sentiment"])
    s = first.get("settings", {})
    data = first.get("data", {})
    goals = first.get("goals", {})  # bench/utility.py's own thresholds, so the two never disagree
    goal_eps, goal_inf = goals.get("ratio_eps4_vs_inf_min"), goals.get("ratio_inf_vs_real_min")
    lines = [f"## Real-model utility ({s.get('model')}, device {s.get('device_used')}, "
             f"{data.get('train_records')} train / {data.get('test_records')} test records, "
             f"{s.get('num_samples')} samples, max {s.get('max_tokens')} / {s.get('max_new_tokens')} new tokens, "
             f"physical batch {s.get('physical_batch_size')}, sample batch {s.get('sample_batch_size')})", ""]
    for col in cols:
        reals = {round(d["accuracy"]["real"][col], 6) for d in docs if col in d.get("accuracy", {}).get("real", {})}
        real = first["accuracy"]["real"][col]
        majority = first.get("majority_accuracy", {}).get(col)
        if len(reals) > 1:
            lines.append(f"WARNING: the runs disagree on the real-data accuracy ({sorted(reals)}): different data?")
        lines += [f"### label `{col}`: (a) real train {_f(real)}, majority class {_f(majority)}", "",
                  "| mode | ε | accuracy | macro-F1 | label agree | rows | steps | σ | ε spent | prec | train s "
                  "| sample s | total s |", "|" + "---|" * 13]
        acc: dict[tuple[str, str], float | None] = {}
        for (mode, eps), doc in runs.items():
            if doc is None:
                lines.append(f"| {mode} | {eps} | not run (no JSON: skipped or timed out) |" + " |" * 10)
                acc[(mode, eps)] = None
                continue
            r = run_row(doc, eps, col)
            if "error" in r:
                lines.append(f"| {mode} | {eps} | error: {r['error'][:80]} |" + " |" * 10)
                acc[(mode, eps)] = None
                continue
            acc[(mode, eps)] = r["accuracy"]
            lines.append(f"| {mode} | {eps} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | {_f(r['agree'])} | "
                         f"{r['rows']} | {r['steps']} | {_f(r['sigma'])} | {_f(r['eps_spent'])} | {r['precision']} | "
                         f"{_num(r['train_s'])} | {_num(r['sample_s'])} | {_num(r['wall_s'])} |")
        lines += ["", "| ratio | lora | full | goal |", "|---|---|---|---|"]
        lines.append("| (c)/(b) = ε=4 / ε=∞ | " + " | ".join(
            _f(_ratio(acc[(m, "4")], acc[(m, "inf")]), True) for m in MODES) + f" | ≥ {_f(goal_eps, True)} |")
        lines.append("| (b)/(a) = ε=∞ / real | " + " | ".join(
            _f(_ratio(acc[(m, "inf")], real), True) for m in MODES) + f" | ≥ {_f(goal_inf, True)} |")
        lines.append("| (c)/(a) = ε=4 / real | " + " | ".join(
            _f(_ratio(acc[(m, "4")], real), True) for m in MODES) + " | |")
        lines.append("")
        for eps in EPSILONS:
            lines.append(f"full / LoRA at ε={eps}: {_f(_ratio(acc[('full', eps)], acc[('lora', eps)]), True)}")
        lines.append("")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(".")
    text = render(out)
    (out / "summary_utility.md").write_text(text + "\n")
    print(text)
    return 0 if any(load_runs(out).values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
