"""Smoke test of bench/evaluate.py: small sizes, no embeddings; the JSON has every stage and the headline metrics."""

from __future__ import annotations

import json
from pathlib import Path

from bench.evaluate import EvalBenchConfig, render, run_benchmark


def test_evaluate_benchmark_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "evaluate.json"
    summary = run_benchmark(EvalBenchConfig(records=150, train_records=150, embeddings=False), out)
    on_disk = json.loads(out.read_text())
    assert on_disk["config"]["records"] == 150 and on_disk["machine"]["cpu"]
    assert {"read", "utility", "text_statistics", "copying", "report"} <= set(on_disk["stages_s"])
    assert all(v >= 0 for v in on_disk["stages_s"].values()) and on_disk["total_s"] > 0
    metrics = on_disk["metrics"]
    assert 0.4 < metrics["accuracy_synthetic_trained"] <= 1 and metrics["accuracy_real_trained"] is not None
    assert metrics["copied_fraction"] == 0.0  # disjoint real snippets share no 8-word run
    assert metrics["mauve"] is None  # embeddings were switched off
    assert "total" in render(summary)
