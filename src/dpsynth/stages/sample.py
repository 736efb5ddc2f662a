"""Stage 6: sampling the synthetic records into the run folder (post-processing: free, and resumable)."""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console

from dpsynth.config import RunConfig
from dpsynth.models.loading import LoadedModel
from dpsynth.privacy.labels import LabelDistribution
from dpsynth.runtime.ranks import DistContext
from dpsynth.sample.sampler import SamplingJob, SamplingSettingsChanged, sample_synthetic
from dpsynth.stages.folder import RunFolder


def sample(config: RunConfig, loaded: LoadedModel, labels: LabelDistribution | None, folder: RunFolder, *,
           num_units: int, device: torch.device, console: Console, ranks: DistContext) -> dict[str, Any]:
    """--num-samples records (one per privacy unit by default) into synthetic.csv. Every rank samples its share of
    the chunks; rank 0 writes the file."""
    model = loaded.model.to(device).eval()
    job = SamplingJob(out_path=folder.synthetic, num_samples=config.num_samples or num_units,
                      label_columns=list(config.label_columns), text_column=config.text_column, labels=labels,
                      decoding=config.decoding(), seed=config.seed, batch_size=config.sample_batch_size,
                      drop_duplicates=config.drop_duplicates)
    try:
        report = sample_synthetic(model, loaded.tokenizer, job, resume=config.resume, ranks=ranks)
    except SamplingSettingsChanged:
        if ranks.enabled:
            raise  # every rank would have to agree to start over; one process can
        # A resumed run whose sampling settings changed: sampling is free post-processing of the trained model, so
        # start the file over rather than send the user to --overwrite, which would retrain (a second release).
        console.print(f"{folder.synthetic.name} was being sampled with other settings: sampling it again")
        report = sample_synthetic(model, loaded.tokenizer, job, resume=False, ranks=ranks)
    return report.to_dict()
