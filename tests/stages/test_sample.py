"""The sampling stage of a run: a resumed run whose sampling settings changed samples its file again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from rich.console import Console

from dpsynth.config import RunConfig
from dpsynth.runtime.ranks import SINGLE_PROCESS
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.model import load_base_model
from dpsynth.stages.sample import sample


def test_a_resumed_run_samples_again_when_its_sampling_settings_changed(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    """A run interrupted while sampling, resumed with other sampling settings: sampling is free post-processing, so
    the file starts over instead of sending the user to --overwrite (which would retrain: a second release)."""
    out = tmp_path / "run"
    out.mkdir()
    first = RunConfig(data=tmp_path / "unused.csv", model=str(tiny_model_dir), out=out, num_samples=6,
                      max_new_tokens=4, top_k=1)
    loaded = load_base_model(first, torch.device("cpu"))
    kw = dict(num_units=6, device=torch.device("cpu"), console=Console(quiet=True), ranks=SINGLE_PROCESS)
    sample(first, loaded, None, RunFolder(out), **kw)
    resumed = first.model_copy(update={"resume": True, "top_k": 5, "num_samples": 4})
    report = sample(resumed, loaded, None, RunFolder(out), **kw)
    assert report["requested"] == 4 and report["resumed_rows"] == 0
    assert len(pd.read_csv(out / "synthetic.csv", keep_default_na=False)) == report["rows_written"]
