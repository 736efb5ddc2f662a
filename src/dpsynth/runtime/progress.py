"""Progress bars (rich) for training steps, sampled records and slow evaluation steps, and quiet library loads.

On a terminal a bar redraws in place; in a log file (CI, a scheduler) it would repeat hundreds of times, so
training prints one plain line every ~10 % instead and the other bars stay silent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from transformers.utils import logging as hf_logging


class TrainingProgress:
    """Step t/T, a smoothed training loss and the ε spent after t steps (from the accountant)."""

    def __init__(self, total_steps: int, epsilon_at: Callable[[int], float] | None, *, start_step: int = 0,
                 console: Console | None = None, label: str = "training") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self._line_every = max(1, total_steps // 10)
        self.epsilon_at = epsilon_at
        self.total = total_steps
        self._loss: float | None = None
        self._eps_every = max(1, total_steps // 50)  # each ε evaluation costs tens of milliseconds
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

    def update(self, step: int, mean_loss: float | None) -> None:
        if mean_loss is not None:
            self._loss = mean_loss if self._loss is None else 0.9 * self._loss + 0.1 * mean_loss
        if self.epsilon_at is not None and (step % self._eps_every == 0 or step == self.total):
            self._eps = self.epsilon_at(step)
        loss = f"{self._loss:.3f}" if self._loss is not None else "–"
        self.progress.update(self.task, completed=step, loss=loss, eps=self._fmt_eps(self._eps))
        if not self.console.is_terminal and (step % self._line_every == 0 or step == self.total):
            self.console.print(f"{self.label}: step {step}/{self.total}  loss {loss}  "
                               f"ε {self._fmt_eps(self._eps)}", highlight=False)


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:.1f} rec/s" if task.speed else "– rec/s")


class RecordProgress:
    """Records sampled out of a total that top-up rounds may grow; silent when disabled or off a terminal."""

    def __init__(self, enabled: bool, total: int, completed: int = 0) -> None:
        console = Console(stderr=True)
        self.bar: Progress | None = None
        if not enabled or completed >= total or not console.is_terminal:
            return
        bar = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self.task = bar.add_task("sampling", total=total, completed=completed)
        try:
            bar.start()
        except LiveError:  # the caller already shows a live display: sample without a bar of our own
            return
        self.bar = bar

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def grow(self, more: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=(self.bar.tasks[0].total or 0) + more)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class StepProgress:
    """A transient bar for slow evaluation steps: `with StepProgress(True, total, "embedding") as advance:
    advance(n, loss=0.3)`; a no-op when disabled, so library callers and tests stay silent."""

    def __init__(self, enabled: bool, total: int, label: str, *, show_loss: bool = False) -> None:
        self.enabled, self.total, self.label, self.show_loss = enabled, total, label, show_loss
        self.loss: float | None = None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda n=1, loss=None: None
        columns: list[Any] = [TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn()]
        if self.show_loss:
            columns.append(TextColumn("loss {task.fields[loss]}"))
        self.progress = Progress(*columns, TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task(self.label, total=self.total, loss="–")
        self.progress.start()

        def advance(n: int = 1, loss: float | None = None) -> None:
            if loss is not None:
                self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
                self.progress.update(self.task, advance=n, loss=f"{self.loss:.3f}")
            else:
                self.progress.update(self.task, advance=n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (weight-loading and shard-writing bars, 'newly initialised head'
    notices) for a block: it would cut through the command's own progress display."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
