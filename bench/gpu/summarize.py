"""Condense the GPU run's JSON files into one short Markdown table (printed last, so the run tool's output tail
carries it, and written next to the JSON files).

Usage: python bench/gpu/summarize.py OUT_DIR   (reads smoke.json, train_step_*.json, sample_*.json there)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _gib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def smoke_lines(rep: dict[str, Any]) -> list[str]:
    lines = [f"### smoke ({rep.get('gpu') or rep.get('device')}, torch {rep.get('torch')}, CUDA {rep.get('cuda')})",
             "| check | result | s | details |", "|---|---|---|---|"]
    for name, r in rep.get("checks", {}).items():
        details = r.get("error") or ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k not in ("ok", "wall_s", "traceback_tail", "timings", "sampling") and not isinstance(v, dict))
        cases = {k: v for k, v in r.items() if isinstance(v, dict) and "ok" in v}  # engine_fp32's model cases
        if cases and not r.get("error"):
            worst = max(max(v.get("norm_rel_err", 0), v.get("sum_rel_err_max", 0)) for v in cases.values())
            failed = [k for k, v in cases.items() if not v["ok"]]
            details = f"{len(cases)} models, worst rel. err {worst:.2g}" + (f", failed: {failed}" if failed else "")
        lines.append(f"| {name} | {'PASS' if r.get('ok') else '**FAIL**'} | {r.get('wall_s', '')} | {details[:160]} |")
    return lines


def train_lines(rep: dict[str, Any]) -> list[str]:
    c = rep["config"]
    lines = [f"### train step: {c['model']}, batch {c['batch']}×{c['seq_len']}, {c['precision']}, "
             f"median of {c['steps']} after {c['warmup']} warm-up",
             "| mode | method | s/step | tokens/s | × nonpriv | peak GiB | × nonpriv |",
             "|---|---|---|---|---|---|---|"]
    for mode, entry in rep.get("modes", {}).items():
        base = entry["methods"].get("nonprivate") or {}
        for method, r in entry["methods"].items():
            if "error" in r:
                lines.append(f"| {mode} | {method} | **failed**: {r['error'][:100]} | | | | |")
                continue
            tr = r["time_s"] / base["time_s"] if base.get("time_s") else None
            mr = r["peak_mem_bytes"] / base["peak_mem_bytes"] if base.get("peak_mem_bytes") else None
            lines.append(f"| {mode} | {method} | {r['time_s']:.4f} | {r['tokens_per_s']:,.0f} | {_x(tr)} | "
                         f"{_gib(r['peak_mem_bytes'])} | {_x(mr)} |")
    return lines


def sample_lines(rep: dict[str, Any]) -> list[str]:
    lines = [f"### sampling: {rep['model_description']}, {rep['dtype']}, {rep['new_tokens_per_sequence']} new tokens",
             "| method | batch | new tokens/s | s |", "|---|---|---|---|"]
    for r in [rep["reference"], rep.get("reference_same_batch"), *rep["dpsynth"]]:
        if r:
            lines.append(f"| {r['method']} | {r['batch_size']} | {r['tokens_per_s']:,.0f} | {r['seconds']:.2f} |")
    lines.append(f"speedup vs batch-8 generate: {rep['speedup_vs_reference']:.1f}× (target ≥ 20×)")
    if rep.get("speedup_vs_generate_same_batch"):
        lines.append(f"speedup vs generate at the same batch: {rep['speedup_vs_generate_same_batch']:.2f}×")
    floor = (rep.get("bandwidth_floor") or {}).get("best")
    if floor:
        lines.append(f"bandwidth floor {floor['floor_tokens_per_s']:,.0f} tokens/s; measured "
                     f"{100 * floor['fraction_of_floor']:.1f}% of it (target: within 3×, i.e. ≥ 33%)")
    if "static" not in rep["best"]["method"] and rep.get("machine", {}).get("device") == "cuda":
        lines.append("**warning**: the best dpsynth run did not use the static/compiled path (fell back?)")
    return lines


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ".")
    lines: list[str] = ["## dpsynth GPU run summary", ""]
    smoke = _load(out / "smoke.json")
    if smoke:
        lines += [*smoke_lines(smoke), ""]
    for path in sorted(out.glob("train_step_*.json")):
        rep = _load(path)
        lines += [*(train_lines(rep) if rep and "config" in rep else [f"{path.name}: unreadable"]), ""]
    for path in sorted(out.glob("sample_*.json")):
        rep = _load(path)
        lines += [*(sample_lines(rep) if rep and "best" in rep else [f"{path.name}: unreadable"]), ""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
