"""One small rich progress bar for the slow evaluation steps (embedding, classifier fine-tuning, LM losses).

Transient (it disappears when done) so the CLI's final summary table stays readable, and a no-op when disabled,
so library callers and tests stay silent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class StepProgress:
    """`with StepProgress(True, total, "embedding") as advance: advance(n, loss=0.3)`."""

    def __init__(self, enabled: bool, total: int, label: str, *, show_loss: bool = False) -> None:
        self.enabled, self.total, self.label, self.show_loss = enabled, total, label, show_loss
        self.loss: float | None = None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda n=1, loss=None: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


class quiet_transformers:  # noqa: N801 - used as a context manager, named like one
    """Silence transformers' loading chatter (weight-loading bars, 'newly initialised head' notices) for a block.

    Those messages are expected when evaluation builds a classifier head or loads a local folder, and they would
    bury the one progress bar that matters.
    """

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
