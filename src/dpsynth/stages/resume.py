"""Resuming an interrupted run: everything `--resume` reads back, checks and continues, in one place.

An interrupted run left in its folder: `checkpoint/settings.json` (the settings it ran with and the SHA-256 of
its data file), `checkpoint/state.pt` (weights, optimizer, sampler and noise states at the last checkpoint),
`privacy.json` (the ledger, written before every noisy update, so it also counts the steps taken after the
checkpoint) and, once paid for, `label_distribution.json`. A resumed run
- takes the stored settings, with flags overriding only what may change (RESUME_MAY_CHANGE);
- refuses another data file, and a setting that would change what is trained or what the ledger counts;
- carries the spending over: steps after the checkpoint stay counted and the run stops at the planned total;
- reuses the paid-for label histogram, never draws a second one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from dpsynth.config import RunConfig, config_from_sources, read_config_file
from dpsynth.errors import DpsynthError, first_line
from dpsynth.privacy.accounting import DpSgdMechanism, GaussianMechanism
from dpsynth.privacy.labels import LabelDistribution, label_distribution_from_dict
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.runtime.files import read_json, write_json_atomic
from dpsynth.stages.folder import RunFolder
from dpsynth.train.checkpoint import load_checkpoint, restore_checkpoint

# What a resumed run may do differently: where it runs, how it checkpoints, and the sampling still to come (the
# seed: the weights, batches and noise state come from the checkpoint). The data file may move (its contents are
# checked against the digest stored with the checkpoint). Everything else defines what was trained so far and what
# the ledger counts.
RESUME_MAY_CHANGE = frozenset({
    "data", "out", "resume", "overwrite", "device", "precision", "physical_batch_size", "checkpoint_every",
    "num_samples", "top_k", "top_p", "temperature", "repetition_penalty", "max_new_tokens", "min_new_tokens",
    "sample_batch_size", "drop_duplicates", "seed",
})
# Settings whose default follows from other settings alone: giving that default explicitly on --resume is no change.
_DEFAULT_RESOLVERS: dict[str, Any] = {"epochs": RunConfig.resolved_epochs,
                                      "lr_schedule": RunConfig.resolved_lr_schedule}


# ------------------------------------------------------------------------------------------ settings
def run_config_from_sources(toml_path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """`config_from_sources`, with `--resume --out DIR` alone enough: the interrupted run stored the settings it ran
    with (its TOML file's included) with its checkpoint. They win over the TOML file; flags given now win over
    them where they may change; any other change is refused when the run starts (`refuse_changed_settings`, which
    also sees a RunConfig built in Python)."""
    given = {**(read_config_file(toml_path) if toml_path is not None else {}),
             **{k: v for k, v in overrides.items() if v is not None}}
    stored = None
    if given.get("resume") and not given.get("overwrite") and given.get("out") is not None:
        stored = _stored_or_explained(RunFolder(Path(given["out"])), given=given)
    return config_from_sources(toml_path, overrides, stored=stored)


def stored_settings(folder: RunFolder) -> dict[str, Any] | None:
    """The settings an interrupted run stored with its checkpoint; None if there are none (or they are unreadable,
    in which case the options must be given again)."""
    try:
        settings = read_json(folder.resume_settings, "the stored settings")
    except DpsynthError:
        return None
    return settings if isinstance(settings, dict) else None


def store_settings(folder: RunFolder, config: RunConfig, data_sha256: str) -> None:
    """Keep the run's settings and its data file's digest with the checkpoint (before the checkpoint's state)."""
    write_json_atomic(folder.resume_settings, {**config.resume_settings(), "data_sha256": data_sha256})


def _stored_or_explained(folder: RunFolder, *, given: dict[str, Any]) -> dict[str, Any]:
    stored = stored_settings(folder)
    if stored is None:
        folder.check(overwrite=False, resume=True)  # a finished or unstarted run: its own message
        if "data" not in given:
            raise DpsynthError(f"{folder.resume_settings} is missing or unreadable: resume with the interrupted "
                               "run's options given again")
        return {}
    return {k: v for k, v in stored.items() if k in RunConfig.model_fields}


def refuse_changed_settings(config: RunConfig) -> None:
    """Refuse, by name, a setting outside RESUME_MAY_CHANGE that differs from the one stored with the checkpoint.

    Why: half the steps at one setting and half at another is neither run; the records (run.json, the ledger's
    clip norm) would describe only the new value, and some changes (another LoRA rank, model) cannot load the
    checkpoint at all.
    """
    stored = stored_settings(RunFolder(Path(config.out)))
    if stored is None:
        return
    before = {k: v for k, v in stored.items() if k in RunConfig.model_fields}
    then = RunConfig(**{**before, "out": config.out, "resume": True})
    now = config.model_dump(mode="json")
    for key, value in then.model_dump(mode="json").items():
        if key in RESUME_MAY_CHANGE or _same_setting(value, now[key]):
            continue
        resolve = _DEFAULT_RESOLVERS.get(key)
        if resolve is not None and resolve(then) == resolve(config):  # the default, left out once and given once
            continue
        flag = "--" + key.replace("_", "-")
        raise DpsynthError(f"--resume continues the run as it started, so {flag} cannot change (it was "
                           f"{value!r}, now {now[key]!r}); drop {flag}, or start a new run with --overwrite")


def _same_setting(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):  # the same file, named relatively now and absolutely then
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return False


def check_same_data(folder: RunFolder, config: RunConfig, data_sha256: str) -> None:
    """--resume must read the very records the interrupted run trained on."""
    stored = (stored_settings(folder) or {}).get("data_sha256")
    if stored and stored != data_sha256:
        raise DpsynthError(f"--resume: {config.data} is not the file the interrupted run trained on (its bytes "
                           "differ); resume with that file, or start a new run with --overwrite")


# ------------------------------------------------------------------------------------------ privacy spent
def carry_over_spending(folder: RunFolder, ledger: PrivacyLedger) -> None:
    """Start from what the interrupted run already spent (read before anything rewrites the file).

    The interrupted run's steps include those taken after its last checkpoint: they stay counted. A resume whose
    settings would change the mechanisms (another ε, batch size, N…) is refused: two plans cannot share a ledger.
    """
    if not folder.privacy.is_file():
        return
    prior = PrivacyLedger.read(folder.privacy)
    new = next(m for m in ledger.mechanisms if isinstance(m, DpSgdMechanism))
    old = next((m for m in prior.mechanisms if isinstance(m, DpSgdMechanism)), None)
    if old is None or not math.isclose(old.noise_multiplier, new.noise_multiplier, rel_tol=1e-9) \
            or not math.isclose(old.sample_rate, new.sample_rate, rel_tol=1e-12) or prior.delta != ledger.delta:
        raise DpsynthError(f"--resume: the settings differ from the interrupted run in {folder.path} (its noise, "
                           "sampling rate or δ would change); resume without the options that change them "
                           "(`dpsynth run --resume --out DIR` alone uses the stored settings), or start a new run")
    ledger.set_dpsgd_steps(old.steps)
    for m in prior.mechanisms:
        if isinstance(m, GaussianMechanism):
            ledger.add(m)


def paid_label_distribution(folder: RunFolder, ledger: PrivacyLedger,
                            histogram: GaussianMechanism) -> LabelDistribution | None:
    """The label histogram an interrupted run already released (and paid for), or None if it drew none yet.

    A second draw would be a second release (secure noise, or a seed changed on resume), and the threshold's δ
    was sized for one: a paid histogram whose file is gone is refused, never redrawn."""
    if not any(m == histogram for m in ledger.mechanisms):
        return None
    if not folder.labels.is_file():
        raise DpsynthError(f"--resume: {folder.labels.name} is missing from {folder.path}, but the interrupted run "
                           "already paid for its DP label histogram; put the file back, or start again with "
                           "--overwrite")
    return label_distribution_from_dict(read_json(folder.labels, "the label distribution"))


# ------------------------------------------------------------------------------------------ training state
def restore_training(folder: RunFolder, spent: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: Any, noise: Any) -> tuple[int, int]:
    """(checkpoint step, steps already spent per the carried-over ledger). Lost steps stay spent."""
    ckpt = load_checkpoint(folder.checkpoint)
    step = 0
    if ckpt is not None:
        try:
            restore_checkpoint(ckpt, model=model, optimizer=optimizer, sampler=sampler, noise=noise)
        except (ValueError, RuntimeError) as exc:  # RuntimeError: torch's size mismatch (e.g. another LoRA rank)
            raise DpsynthError(f"--resume: the checkpoint in {folder.checkpoint} does not fit this run "
                               f"({first_line(exc)}); resume with the settings stored with it (`dpsynth run "
                               "--resume --out DIR` alone)") from None
        step = ckpt.step
    return step, max(step, spent)
