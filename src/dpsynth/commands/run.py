"""`dpsynth run`: private table → DP fine-tuned model → synthetic table + privacy ledger.

Order matters for "bad input loses nothing": everything that can be refused (the output folder, the file, the
columns, the model, the privacy budget, the label setting) is checked before the output folder is touched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dpsynth.config import RunConfig
from dpsynth.errors import DpsynthError
from dpsynth.report.summary import guarantee_line
from dpsynth.runtime.device import resolve_device, resolve_precision
from dpsynth.runtime.ranks import init_distributed, weights_digest
from dpsynth.stages import resume
from dpsynth.stages.data import load_private_data
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.labels import build_labels, check_sampling_fits
from dpsynth.stages.model import encode_training_records, load_base_model, prepare_for_training, save_model
from dpsynth.stages.plan import open_ledger, plan_run
from dpsynth.stages.record import write_records
from dpsynth.stages.sample import sample
from dpsynth.stages.train import train


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

    def print_summary(self, console: Console | None = None) -> None:
        """Where everything is and what the guarantee is, as `dpsynth run` prints it at the end."""
        table = Table(title="dpsynth run", show_header=False)
        table.add_row("guarantee", guarantee_line(self.epsilon, self.delta))
        table.add_row("synthetic data", f"{self.synthetic_path} ({self.num_samples} records)")
        table.add_row("privacy ledger", str(self.privacy_path))
        table.add_row("model", str(self.model_path))
        table.add_row("run record", str(self.run_path))
        table.add_row("private data report", f"{RunFolder(self.out).data_report} (exact counts, not covered: keep "
                                             "it with the data)")
        table.add_row("time", f"{self.timings.get('total_s', 0.0):.0f} s")
        (console or Console()).print(table)


def run(config: RunConfig | None = None, *, console: Console | None = None, **settings: Any) -> RunResult:
    """Run the whole pipeline for a RunConfig, or for its settings as keywords (`run(data=..., out=..., epsilon=4)`,
    checked like command-line flags, so a bad value is one DpsynthError sentence rather than a pydantic report).
    Raises DpsynthError for any bad input, before writing."""
    if config is None:
        config = resume.run_config_from_sources(None, settings)
    elif settings:
        raise TypeError("pass either a RunConfig or settings as keywords, not both")
    ranks = init_distributed()  # one process unless launched by torchrun
    if ranks.enabled and not config.private:
        raise DpsynthError("multi-process runs train with DP; run --epsilon inf in a single process")
    console = console or Console(stderr=True)
    if not ranks.is_main:
        console = Console(stderr=True, quiet=True)  # one progress display per run, not one per rank
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    folder = RunFolder(config.out)
    folder.check(overwrite=config.overwrite, resume=config.resume)
    if config.resume:  # also for a RunConfig built in Python, which did not pass through the CLI's sources
        resume.refuse_changed_settings(config)
    device = resolve_device(config.device, ranks)
    precision = resolve_precision(config.precision, device)

    t = time.perf_counter()
    data = load_private_data(config)
    if config.resume:
        resume.check_same_data(folder, config, data.sha256)
    with console.status("loading the model"):
        loaded = load_base_model(config, device)
    records = encode_training_records(config, data, loaded)
    timings["load_and_encode_s"] = time.perf_counter() - t
    plan = plan_run(config, data)
    warning = plan.weak_signal_warning()
    if warning is not None and not config.resume:  # said once, when the run is planned
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    prepare_for_training(config, loaded, device)
    ledger = open_ledger(plan, folder, resume=config.resume)
    labels = build_labels(config, data, plan, ledger, folder, ranks)
    check_sampling_fits(config, loaded, labels)
    ranks.barrier()  # every rank has checked the folder and read any prior ledger before rank 0 writes
    if ranks.is_main:
        folder.prepare(overwrite=config.overwrite, resume=config.resume)
        ledger.write(folder.privacy)
        if labels is not None:  # saved now: `--resume` and `dpsynth sample` reuse it instead of paying again
            folder.write_json(folder.labels, labels.to_dict())

    t = time.perf_counter()
    training = train(config, data, records, loaded, plan, ledger, folder, device=device, precision=precision,
                     console=console, ranks=ranks)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if ranks.is_main:
        save_model(config, loaded, folder)
        ledger.write(folder.privacy)
    # sharded sampling equals one process's only if every rank samples from the same weights
    ranks.check_same(weights_digest(loaded.model), "trained weights")
    sampling = sample(config, loaded, labels, folder, num_units=data.num_units, device=device, console=console,
                      ranks=ranks)
    timings["sample_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    if ranks.is_main:
        write_records(config, folder, data=data, loaded=loaded, plan=plan, ledger=ledger, labels=labels,
                      training=training, sampling=sampling, device=device, precision=precision,
                      world_size=ranks.world_size, timings=timings)
        folder.remove_checkpoint()
    ranks.barrier()
    return RunResult(out=config.out, synthetic_path=folder.synthetic, privacy_path=folder.privacy,
                     model_path=folder.model, run_path=folder.record,
                     epsilon=ledger.epsilon if config.private else math.inf, delta=ledger.delta,
                     num_samples=sampling.get("rows_written", 0), timings=timings)
