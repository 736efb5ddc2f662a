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
            # In-process on the CPU, RSS peaks are polluted by earlier methods: not reported as the figure...
            assert r["peak_mem_bytes"] is None and "peak_mem_unisolated_bytes" in r
            # ...but the live-tensor peak is exact in any process: at least the trained weights themselves.
            assert r["memory_bytes"] == r["peak_tensor_bytes"] > 4 * r["trainable_params"]
        assert entry["dp_memory_ratio"] == pytest.approx(
            entry["methods"]["dpsynth"]["memory_bytes"] / entry["methods"]["nonprivate"]["memory_bytes"])
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


def test_live_tensor_peak_sees_a_transient_allocation() -> None:
    """The CPU memory metric counts a tensor that exists only in the middle of the step (and nothing freed early)."""
    import torch
    from bench.train_step import Prepared, _tensor_peak_bytes

    size = 10_000_000  # 40 MB of float32

    def step(laps) -> None:  # noqa: ANN001
        x = torch.ones(size)
        y = x * 2  # x and y alive together: 80 MB
        del x
        float(y.sum())

    peak = _tensor_peak_bytes(Prepared(step, [], {}, []), torch.device("cpu"))
    assert peak is not None and 8 * size <= peak < 8 * size + 2**20
