"""dpsynth: differentially private synthetic text from a pretrained causal language model.

Python API (mirrors the CLI)::

    import dpsynth
    result = dpsynth.run(data="reviews.csv", label_columns=["category", "stars"], epsilon=4, out="runs/r1")
    result.synthetic_path, result.epsilon
    # or build the config first: dpsynth.run(dpsynth.RunConfig(data=..., out=...))
    # after an interruption instead: dpsynth.resume("runs/r1") continues with the settings in its checkpoint

Names are imported lazily so that `dpsynth --help` does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": ("dpsynth.commands.run", "run"),
    "resume": ("dpsynth.commands.resume", "resume"),
    "RunResult": ("dpsynth.commands.run", "RunResult"),
    "RunConfig": ("dpsynth.config", "RunConfig"),
    "DpsynthError": ("dpsynth.errors", "DpsynthError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'dpsynth' has no attribute {name!r}")
