"""dpsynth: differentially private synthetic text from a pretrained causal language model."""

from __future__ import annotations

__version__ = "0.1.0"
