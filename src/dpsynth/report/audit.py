"""What `dpsynth audit` found, in words and as a table: one block of measures and one sentence per ε."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

SUMMARY_COLUMNS = ("measure", "value", "good is")


def audit_summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, what good looks like) rows for a rich table in the CLI, one block per ε."""
    rows: list[tuple[str, str, str]] = []
    ranked = report["settings"]["secrets_ranked"]
    for run in report["runs"]:
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


def summarise_run(run: dict[str, Any], ranked: int) -> str:
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


def by_repetitions(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
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


def print_audit_summary(result: Any, console: Console | None = None) -> None:
    """The table, the sentences and the paths, as `dpsynth audit` shows them."""
    console = console or Console()
    table = Table(title="dpsynth audit")
    for col in SUMMARY_COLUMNS:
        table.add_column(col)
    for row in audit_summary_rows(result.report):
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
