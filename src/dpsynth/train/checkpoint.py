"""Training checkpoints for `--resume`: written atomically, holding everything a continued run needs.

A checkpoint holds the trainable weights (adapters only for LoRA), the optimizer, the Poisson sampler's and the
noise generator's states, torch's RNG, and the step. It never holds training text. The privacy ledger is *not*
restored from the checkpoint: it is written before every noisy update, so it already counts the steps taken after
the last checkpoint, which a resumed run pays for again (see `resume_plan`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"


@dataclass
class Checkpoint:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    sampler: dict[str, Any] | None
    noise: dict[str, Any] | None
    torch_rng: torch.Tensor
    extra: dict[str, Any]


def trainable_names(model: nn.Module) -> set[str]:
    """Names of what training changes (all weights, or the LoRA adapters). Take it *before* the clipping engine
    attaches: the engine switches requires_grad off while it runs."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, *, step: int, model: nn.Module, names: set[str],
                    optimizer: torch.optim.Optimizer, sampler: Any = None, noise: Any = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write folder/state.pt atomically (temporary file, fsync, os.replace): a kill leaves the old or the new."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "trainable": {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in names},
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict() if sampler is not None and hasattr(sampler, "state_dict") else None,
        "noise": noise.state_dict() if noise is not None and hasattr(noise, "state_dict") else None,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(folder: Path) -> Checkpoint | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return Checkpoint(step=int(state["step"]), trainable=state["trainable"], optimizer=state["optimizer"],
                      sampler=state["sampler"], noise=state["noise"], torch_rng=state["torch_rng"],
                      extra=state.get("extra", {}))


def restore_checkpoint(ckpt: Checkpoint, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       sampler: Any = None, noise: Any = None) -> None:
    missing = set(ckpt.trainable) - set(model.state_dict())
    if missing:
        raise ValueError(f"checkpoint does not match the model ({len(missing)} unknown tensors)")
    model.load_state_dict(ckpt.trainable, strict=False)
    optimizer.load_state_dict(ckpt.optimizer)
    if sampler is not None and ckpt.sampler is not None:
        sampler.load_state_dict(ckpt.sampler)
    if noise is not None and ckpt.noise is not None:
        noise.load_state_dict(ckpt.noise)
    torch.set_rng_state(ckpt.torch_rng)


@dataclass(frozen=True)
class ResumePlan:
    """Where a resumed DP run starts, and how many more noisy updates the budget still allows."""

    start_step: int  # the checkpoint's step: the model's state
    steps_already_spent: int  # from the ledger: includes updates lost in the crash
    remaining_steps: int  # planned total − spent: the run stops when the ledger reaches the planned total


def resume_plan(planned_steps: int, checkpoint_step: int, spent_steps: int) -> ResumePlan:
    """Steps taken after the last checkpoint were spent (their updates existed, if briefly): they stay counted,
    and the continued run takes only as many new steps as the budget has left, so ε never exceeds the target."""
    spent = max(spent_steps, checkpoint_step)
    return ResumePlan(checkpoint_step, spent, max(0, planned_steps - spent))
