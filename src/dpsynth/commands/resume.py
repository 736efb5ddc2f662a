"""`dpsynth.resume(DIR)`: continue an interrupted run with the settings stored in its checkpoint (the Python twin
of `dpsynth run --resume --out DIR`; stages/resume.py holds everything a resume reads back and checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpsynth.commands.run import RunResult, run
from dpsynth.stages.resume import run_config_from_sources


def resume(out: str | Path, **overrides: Any) -> RunResult:
    """Keyword arguments override the stored settings, like flags (only those a resume may change)."""
    return run(run_config_from_sources(None, {**overrides, "out": out, "resume": True}))
