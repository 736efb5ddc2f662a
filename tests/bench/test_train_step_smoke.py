"""Smoke test of the training-step benchmark: the in-process core on a tiny model, non-private and dpsynth only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench.train_step import BenchConfig, render_table, run_benchmark


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    cfg = BenchConfig(model="tiny", batch=3, seq_len=16, steps=1, warmup=0, modes=("full", "lora"),
                      methods=("nonprivate", "dpsynth", "dpsynth_frozen_emb"), isolate="inprocess")
    return run_benchmark(cfg, out), out


def test_json_written_with_finite_positive_times_and_ratios(report: tuple[dict, Path]) -> None:
    result, out = report
    on_disk = json.loads(out.read_text())
    assert on_disk["modes"].keys() == {"full", "lora"}
    assert on_disk["versions"]["torch"] and on_disk["machine"]["cpu"]
    for mode, entry in on_disk["modes"].items():
        expected = {"nonprivate", "dpsynth"} | ({"dpsynth_frozen_emb"} if mode == "full" else set())
        assert entry["methods"].keys() == expected  # frozen-embedding variants only make sense in full mode
        for method, r in entry["methods"].items():
            assert "error" not in r, f"{mode}/{method}: {r.get('error')}"
            assert math.isfinite(r["time_s"]) and r["time_s"] > 0
            assert r["tokens_per_s"] == pytest.approx(3 * 16 / r["time_s"])
            assert r["updated_fraction"] == 1.0, "every trainable tensor must have been updated by the step"
            assert r["phases_s"]["forward"] > 0 and r["phases_s"]["optimizer"] > 0
            assert sum(r["phases_s"].values()) == pytest.approx(r["time_s"])  # one step: phases add up to it
            # In-process on the CPU, RSS peaks are polluted by earlier methods: not reported as the figure.
            assert r["peak_mem_bytes"] is None and r["memory_bytes"] is None and "peak_mem_unisolated_bytes" in r
        assert set(entry["methods"]["dpsynth"]["phases_s"]) == {"forward", "backward", "noise", "optimizer"}
        for key in ("dp_time_ratio", "dp_memory_ratio", "opacus_hooks_time_ratio", "opacus_ghost_time_ratio"):
            assert key in entry
        assert entry["dp_time_ratio"] == pytest.approx(
            entry["methods"]["dpsynth"]["time_s"] / entry["methods"]["nonprivate"]["time_s"])
        assert entry["opacus_hooks_time_ratio"] is None  # not run here: recorded as missing, not invented
    full, lora = on_disk["modes"]["full"], on_disk["modes"]["lora"]
    assert full["opacus_embeddings_frozen"] is True
    # Freezing the (tied) embeddings leaves fewer trainable weights; LoRA far fewer still, all handled by the engine.
    n_full = full["methods"]["dpsynth"]["trainable_params"]
    assert full["methods"]["dpsynth_frozen_emb"]["trainable_params"] < n_full
    assert lora["methods"]["dpsynth"]["trainable_params"] < n_full / 4
    assert full["methods"]["dpsynth"]["dpsynth_layers"]["embedding"] == 1
    assert set(lora["methods"]["dpsynth"]["dpsynth_layers"]) == {"linear/instantiate"}


def test_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    """A method that cannot run (here: a model that does not exist) becomes an error entry, not a crash."""
    cfg = BenchConfig(model="no-such-model", batch=1, seq_len=8, steps=1, warmup=0, modes=("lora",),
                      methods=("nonprivate",), isolate="inprocess")
    result = run_benchmark(cfg, tmp_path / "x.json")
    entry = result["modes"]["lora"]
    assert "unknown model" in entry["methods"]["nonprivate"]["error"]
    assert entry["dp_time_ratio"] is None


def test_repeats_keep_the_fastest_round(tmp_path: Path) -> None:
    cfg = BenchConfig(model="tiny", batch=2, seq_len=8, steps=1, warmup=0, modes=("lora",),
                      methods=("nonprivate",), isolate="inprocess", repeats=2)
    r = run_benchmark(cfg, tmp_path / "r.json")["modes"]["lora"]["methods"]["nonprivate"]
    assert len(r["time_s_repeats"]) == 2
    assert r["time_s"] == min(r["time_s_repeats"])


def test_table_renders(report: tuple[dict, Path], capsys: pytest.CaptureFixture[str]) -> None:
    render_table(report[0])
    text = capsys.readouterr().out
    assert "dpsynth_frozen_emb" in text and "nonprivate" in text


def test_accumulated_logical_step_counts_every_micro_batch(tmp_path: Path) -> None:
    """`accumulate=K`: K forward/backward passes per logical step, noise and optimizer once; Opacus skipped."""
    cfg = BenchConfig(model="tiny", batch=2, seq_len=8, steps=1, warmup=0, modes=("lora",),
                      methods=("nonprivate", "dpsynth", "opacus_hooks"), isolate="inprocess", accumulate=3)
    assert cfg.methods == ("nonprivate", "dpsynth")
    result = run_benchmark(cfg, tmp_path / "acc.json")
    for r in result["modes"]["lora"]["methods"].values():
        assert "error" not in r, r.get("error")
        assert r["tokens_per_s"] == pytest.approx(3 * 2 * 8 / r["time_s"])
        assert r["updated_fraction"] == 1.0
    with pytest.raises(ValueError, match="accumulate"):
        BenchConfig(accumulate=0)



def test_child_processes_report_live_memory(tmp_path: Path) -> None:
    """On the CPU each method also runs in a child whose glibc returns freed blocks at once; its peak RSS is the
    figure the memory ratios use."""
    cfg = BenchConfig(model="tiny", batch=2, seq_len=8, steps=1, warmup=0, modes=("lora",),
                      methods=("nonprivate", "dpsynth"), isolate="process")
    entry = run_benchmark(cfg, tmp_path / "live.json")["modes"]["lora"]
    for r in entry["methods"].values():
        assert "error" not in r, r.get("error")
        assert r["malloc_mmap_threshold"] is None  # the timing child runs with the default allocator...
        assert r["live_child_mmap_threshold"] == "65536"  # ...the memory child with every big block mapped alone
        assert r["memory_bytes"] == r["live_peak_bytes"] > 0 and r["peak_mem_bytes"] > 0
    assert entry["dp_memory_ratio"] == pytest.approx(
        entry["methods"]["dpsynth"]["live_peak_bytes"] / entry["methods"]["nonprivate"]["live_peak_bytes"])
    assert entry["dp_rss_memory_ratio"] == pytest.approx(
        entry["methods"]["dpsynth"]["peak_mem_bytes"] / entry["methods"]["nonprivate"]["peak_mem_bytes"])
