"""Where work runs and in which precision: one rule for every command."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from dpsynth.errors import DpsynthError
from dpsynth.runtime.ranks import DistContext


def resolve_device(choice: str, ranks: DistContext | None = None) -> torch.device:
    """'auto' picks CUDA when present; an explicit CUDA request on a machine without one is a user error. Under
    torchrun each rank takes the GPU of its LOCAL_RANK."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise DpsynthError(f"--device {choice} was asked for but no CUDA GPU is visible; use --device cpu")
    device = torch.device(choice)
    if ranks is not None and ranks.enabled and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    return device


def resolve_precision(choice: str, device: torch.device) -> str:
    """'auto': bf16 autocast on a GPU that supports it, fp32 elsewhere."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if choice == "bf16" and device.type != "cuda":
        raise DpsynthError("--precision bf16 needs a CUDA GPU; on CPU use fp32")
    return choice


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The forward (and backward) pass's autocast for the run's precision; per-example norms stay fp32 anyway."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
