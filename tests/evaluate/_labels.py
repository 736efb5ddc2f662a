"""The demo data's public label values, declared as a run would with --label-values (tiny audits have too few
records for the DP histogram's threshold to publish values read from the data)."""

from __future__ import annotations

import json
from pathlib import Path


def sentiment_values(folder: Path) -> Path:
    path = folder / "label_values.json"
    path.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    return path
