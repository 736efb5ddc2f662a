"""A training progress bar: steps, loss and ε spent so far (rich; silent when not attached to a terminal)."""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpsynth.train.dp_trainer import StepReport


class TrainingProgress:
    """Shows step t/T, a smoothed training loss and the ε spent after t steps (from the accountant).

    On a terminal: a live bar. Otherwise (a log file, CI): one plain line every ~10% of the steps.
    """

    def __init__(self, total_steps: int, epsilon_at: Callable[[int], float] | None, *, start_step: int = 0,
                 console: Console | None = None, label: str = "training") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self._line_every = max(1, total_steps // 10)
        self.epsilon_at = epsilon_at
        self.total = total_steps
        self._loss: float | None = None
        # ε is recomputed on a coarse grid: each PLD evaluation costs tens of milliseconds.
        self._eps_every = max(1, total_steps // 50)
        self._eps = epsilon_at(start_step) if epsilon_at and start_step else 0.0
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("ε {task.fields[eps]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=total_steps, completed=start_step, loss="–",
                                           eps=self._fmt_eps(self._eps))

    def _fmt_eps(self, eps: float) -> str:
        if self.epsilon_at is None:
            return "∞ (no DP)"
        return f"{eps:.2f}" if math.isfinite(eps) else "∞"

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, report: StepReport) -> None:
        if report.mean_loss is not None:
            self._loss = report.mean_loss if self._loss is None else 0.9 * self._loss + 0.1 * report.mean_loss
        if self.epsilon_at is not None and (report.step % self._eps_every == 0 or report.step == self.total):
            self._eps = self.epsilon_at(report.step)
        loss = f"{self._loss:.3f}" if self._loss is not None else "–"
        self.progress.update(self.task, completed=report.step, loss=loss, eps=self._fmt_eps(self._eps))
        if not self.console.is_terminal and (report.step % self._line_every == 0 or report.step == self.total):
            self.console.print(f"{self.label}: step {report.step}/{self.total}  loss {loss}  "
                               f"ε {self._fmt_eps(self._eps)}", highlight=False)
