"""Smoke test of the data-parallel benchmark: `--quick` launches one process and a 2-rank torchrun (gloo, tiny
random model) and must report both, with the same steps, ε and rows, and the speed-ups computed from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.distributed import main


@pytest.mark.timeout(600)
def test_quick_run_compares_one_process_with_two_ranks(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    assert main(["--quick", "--threads", "2", "--out-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert result["checks"] == {"same_steps": True, "same_epsilon": True, "same_rows": True, "world_size_k": True}
    (round_,) = result["rounds"]
    single, ranks = round_["single"], round_["ranks"]
    assert (single["world_size"], ranks["world_size"]) == (1, 2)
    assert (single["threads_per_rank"], ranks["threads_per_rank"]) == (2, 1)
    assert single["steps"] > 0 and single["rows_written"] == 64
    # Only rank 0 writes the outputs, but every rank loads the model: at least the two ranks were seen.
    assert ranks["peak_rss"]["processes_seen"] >= 2 and ranks["peak_rss"]["max_process_gib"] > 0
    median = result["median"]
    assert median["train_speedup"] == pytest.approx(single["train_step_s"] / ranks["train_step_s"], rel=1e-2)
    assert median["sample_speedup"] == pytest.approx(ranks["records_per_s"] / single["records_per_s"], rel=1e-2)
    assert result["settings"]["total_threads"] == 2


def test_one_rank_is_refused() -> None:
    with pytest.raises(SystemExit, match="at least 2"):
        main(["--quick", "--ranks", "1", "--out", "/nonexistent/never-written.json"])
