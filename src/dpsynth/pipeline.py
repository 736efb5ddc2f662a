"""`dpsynth run` as a Python function: private table → DP fine-tuned model → synthetic table + privacy ledger.

Order matters for "bad input loses nothing": everything that can be refused (the output folder, the file, the
columns, the model, the privacy budget) is checked before the output folder is touched.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpsynth import __version__, outputs
from dpsynth.config import RunConfig, config_from_sources, refuse_changed_resume_settings
from dpsynth.errors import DpsynthError


@dataclass
class RunResult:
    """Paths and headline numbers of a finished run (what `dpsynth.run` returns to a notebook)."""

    out: Path
    synthetic_path: Path
    privacy_path: Path
    model_path: Path
    run_path: Path
    epsilon: float
    delta: float | None
    num_samples: int
    timings: dict[str, float] = field(default_factory=dict)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DpsynthError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(choice)


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if choice == "bf16" and device.type != "cuda":
        raise DpsynthError("--precision bf16 needs a CUDA GPU; on CPU use fp32")
    return choice


def versions() -> dict[str, str]:
    import importlib.metadata

    import peft
    import transformers

    return {
        "dpsynth": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "dp_accounting": importlib.metadata.version("dp-accounting"),  # the package has no __version__
    }


def run(config: RunConfig | None = None, *, console: Any = None, **settings: Any) -> RunResult:
    """Run the whole pipeline for a RunConfig, or for its settings as keywords (`run(data=..., out=..., epsilon=4)`,
    checked like command-line flags, so a bad value is one DpsynthError sentence rather than a pydantic report).
    Raises DpsynthError for any bad input, before writing."""
    from rich.console import Console
    from rich.markup import escape

    if config is None:
        config = config_from_sources(None, settings)
    elif settings:
        raise TypeError("pass either a RunConfig or settings as keywords, not both")

    from dpsynth.models.loading import describe_model
    from dpsynth.stages import (
        build_label_distribution,
        check_sampling_fits,
        load_and_encode,
        plan_privacy,
        prepare_model,
        sample_stage,
        save_model,
        train_stage,
    )
    from dpsynth.train.distributed import init_distributed

    ctx = init_distributed()  # one process unless launched by torchrun
    if ctx.enabled and not config.private:
        raise DpsynthError("multi-process runs train with DP; run --epsilon inf in a single process")
    console = console or Console(stderr=True)
    if not ctx.is_main:
        console = Console(stderr=True, quiet=True)  # one progress display per run, not one per rank
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    outputs.check_output_folder(config.out, overwrite=config.overwrite, resume=config.resume)
    if config.resume:  # also for a RunConfig built in Python, which did not pass through config_from_sources
        refuse_changed_resume_settings(config)
    device = resolve_device(config.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    precision = resolve_precision(config.precision, device)

    t = time.perf_counter()
    prepared = load_and_encode(config, device=device, console=console)
    timings["load_and_encode_s"] = time.perf_counter() - t
    budget = plan_privacy(config, prepared)  # refuses an unreachable (ε, δ) before anything is written
    warning = budget.weak_signal_warning()
    if warning is not None and not config.resume:  # said once, when the run is planned
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    prepare_model(config, prepared, device=device)  # refuses a model the engine cannot clip, also before
    # Before training: a label setting that cannot work (e.g. no combination clears the DP threshold) must stop
    # the run before hours of training, not after. The same on every rank.
    labels = build_label_distribution(config, prepared, budget, dist_ctx=ctx)
    check_sampling_fits(config, prepared, labels)  # a sampling stage that would crash: refused before training
    ctx.barrier()  # every rank has checked the folder and read any prior ledger before rank 0 writes

    ledger = budget.ledger
    if ctx.is_main:
        outputs.prepare_output_folder(config.out, overwrite=config.overwrite, resume=config.resume)
        ledger.write(config.out / outputs.PRIVACY)
        if labels is not None:  # saved now: `--resume` and `dpsynth sample` reuse it instead of paying again
            outputs.write_json_atomic(config.out / outputs.LABELS, labels.to_dict())

    t = time.perf_counter()
    train_info = train_stage(config, prepared, budget, device=device, precision=precision, console=console,
                             dist_ctx=ctx)
    timings["train_s"] = time.perf_counter() - t

    model_path = config.out / outputs.MODEL
    t = time.perf_counter()
    if ctx.is_main:  # only rank 0 writes outputs
        save_model(config, prepared, model_path)
        ledger.write(config.out / outputs.PRIVACY)
    if ctx.enabled:  # sharded sampling equals one process's only if every rank samples from the same weights
        from dpsynth.sample.sharded import check_same_on_all_ranks, weights_digest

        check_same_on_all_ranks(ctx, weights_digest(prepared.loaded.model), "trained weights")
    # Every rank samples its share of the chunks; rank 0 merges them into synthetic.csv.
    sample_info = sample_stage(config, prepared, labels, device=device, console=console, dist_ctx=ctx)
    timings["sample_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    data_report = {"covered_by_privacy_guarantee": False,
                   "note": "Exact statistics of the private data, computed without noise: keep this file with the "
                           "private data and do not publish it.",
                   **prepared.data_report, "examples_trained": train_info.pop("examples_seen", None),
                   "clipping_layer_methods": train_info.pop("layer_methods", None)}
    run_record = {
        "dpsynth_version": __version__,
        "config": config.model_dump(mode="json"),
        "versions": versions(),
        "device": str(device), "precision": precision, "world_size": ctx.world_size,
        # Described after training: with LoRA the model now carries its adapters (at load time it did not).
        "model": describe_model(prepared.loaded.model) | {
            "name": prepared.loaded.name, "parameters_trainable": train_info.get("trainable_weights")},
        # Only what is public or paid for: exact data statistics go to data_report.json (see outputs.py).
        "data": {"num_units": prepared.num_units, "unit": prepared.unit_name, "max_tokens": config.max_tokens,
                 "exact_statistics": outputs.DATA_REPORT},
        "privacy": {"epsilon": ledger.epsilon if config.private else None, "delta": ledger.delta,
                    "plan": budget.describe()},
        "training": train_info,
        "sampling": sample_info,
        "label_distribution": None if labels is None else {"source": labels.source,
                                                           "noise_multiplier": labels.noise_multiplier},
        "timings": timings,
    }
    if ctx.is_main:
        outputs.write_json_atomic(config.out / outputs.DATA_REPORT, data_report)
        outputs.write_json_atomic(config.out / outputs.RUN, run_record)
        outputs.remove_checkpoint(config.out)
    ctx.barrier()
    return RunResult(
        out=config.out, synthetic_path=config.out / outputs.SYNTHETIC, privacy_path=config.out / outputs.PRIVACY,
        model_path=model_path, run_path=config.out / outputs.RUN,
        epsilon=ledger.epsilon if config.private else math.inf, delta=ledger.delta,
        num_samples=sample_info.get("rows_written", 0), timings=timings,
    )


def resume(out: str | Path, **overrides: Any) -> RunResult:
    """Continue the interrupted run in `out` with the settings stored in its checkpoint (the Python twin of
    `dpsynth run --resume --out DIR`); keyword arguments override them, like flags."""
    return run(config_from_sources(None, {**overrides, "out": out, "resume": True}))
