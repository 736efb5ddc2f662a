"""What `dpsynth run` prints at the end: where things are and what the guarantee is."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from dpsynth.outputs import DATA_REPORT
from dpsynth.pipeline import RunResult
from dpsynth.report.privacy_text import fmt_eps


def guarantee_line(epsilon: float, delta: float | None) -> str:
    if not math.isfinite(epsilon):
        return "no differential privacy (ε = ∞): the synthetic data may reveal training records"
    return f"(ε = {fmt_eps(epsilon)}, δ = {delta:.2g}) differential privacy"  # ε rounded up, as in the report


def print_run_summary(result: RunResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="dpsynth run", show_header=False)
    table.add_row("guarantee", guarantee_line(result.epsilon, result.delta))
    table.add_row("synthetic data", f"{result.synthetic_path} ({result.num_samples} records)")
    table.add_row("privacy ledger", str(result.privacy_path))
    table.add_row("model", str(result.model_path))
    table.add_row("run record", str(result.run_path))
    table.add_row("private data report", f"{result.out / DATA_REPORT} (exact counts, not covered: keep it "
                                         "with the data)")
    table.add_row("time", f"{result.timings.get('total_s', 0.0):.0f} s")
    console.print(table)
