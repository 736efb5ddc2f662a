"""Sampling split across 2 gloo CPU ranks: the file must be byte-identical to one process's, and resumable.

Fails if chunk boundaries or seeds depended on the world size, if rank 0 committed chunks out of order or
post-processed them in another order (the de-duplicated run has duplicates across chunks and ranks, and top-up
rounds that redraw them), if a resumed run regenerated or lost committed chunks, or if a failure on one rank left
the other waiting. All 2-rank scenarios run in one spawn (process start-up dominates the cost).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from dpsynth.config import DecodingConfig
from dpsynth.privacy.labels import public_label_distribution
from dpsynth.runtime.ranks import DistContext
from tests.conftest import free_port, sample

CATS = {"category": ["fresh", "rotten"], "movie": ["Up", "Cats", "Heat"]}
COLS = ["category", "movie"]
N = 40  # 5 chunks of 8: waves (0, 1), (2, 3), (4)
KW = dict(label_columns=COLS, decoding=DecodingConfig(max_new_tokens=10), seed=7, batch_size=4, chunk_size=8)
# Two tokens from the top 3 repeat texts for the same prompt across chunks and ranks, so de-duplication must drop
# the same rows in the same order, and the top-up rounds that redraw them must be the same on 1 and 2 ranks.
DEDUP_KW = {**KW, "decoding": DecodingConfig(top_k=3, max_new_tokens=2), "drop_duplicates": True}


class SimulatedKill(RuntimeError):
    pass


def _load(folder: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def _labels():
    return public_label_distribution("uniform", COLS, CATS)


def _kill_after(model: torch.nn.Module, calls: int):
    seen = {"n": 0}

    def hook(module, args, output):
        seen["n"] += 1
        if seen["n"] == calls:
            raise SimulatedKill

    return model.register_forward_hook(hook)


def _kill_in_top_up(model: torch.nn.Module, progress: Path):
    """Raise at the first forward pass once the output's progress record says a top-up round has begun."""
    def hook(module, args, output):
        if progress.exists() and json.loads(progress.read_text())["state"].get("round", 0) >= 1:
            raise SimulatedKill

    return model.register_forward_hook(hook)


def _attempt(fn) -> dict:
    try:
        return {"report": fn().to_dict()}
    except Exception as e:  # recorded for the assertions in the main process
        return {"error": type(e).__name__, "message": str(e)}


def _draws_done(out: Path) -> int:
    return int(json.loads(out.with_name(f".{out.name}.progress.json").read_text())["state"]["draws_done"])


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ranks = DistContext(rank=rank, world_size=world)
    base = Path(root)
    model, tok = _load(base / "model")
    labels = _labels()
    res: dict = {}

    def run(out: Path, kw: dict = KW, n: int = N) -> dict:
        return _attempt(lambda: sample(model, tok, labels, n, out, ranks=ranks, **kw))

    res["plain"] = run(base / "two.csv")
    res["dedup"] = run(base / "two_dedup.jsonl", DEDUP_KW)
    # Both ranks killed as the first top-up round begins, then resumed: the round is not lost or redrawn anew.
    handle = _kill_in_top_up(model, base / ".dedup_killed.jsonl.progress.json")
    res["dedup_killed"] = run(base / "dedup_killed.jsonl", DEDUP_KW)
    handle.remove()
    dist.barrier()
    res["dedup_resumed"] = run(base / "dedup_killed.jsonl", DEDUP_KW)
    # Both ranks killed part-way (in the second wave), then resumed with the same world size.
    handle = _kill_after(model, 30)
    res["killed"] = run(base / "killed.csv")
    handle.remove()
    dist.barrier()
    res["draws_after_kill"] = _draws_done(base / "killed.csv") if rank == 0 else None
    res["resumed"] = run(base / "killed.csv")
    # Only rank 1 dies: rank 0 must not wait for it forever; what was committed stays for a resume (by one process).
    handle = _kill_after(model, 30) if rank == 1 else None
    res["one_rank_killed"] = run(base / "half.csv")
    if handle is not None:
        handle.remove()
    # A file half-written by a single process, continued by 2 ranks.
    res["continued"] = run(base / "partial.csv")
    # No shared filesystem needed: the texts travel to rank 0; rank 1 writes nothing.
    res["unshared"] = run(base / ("nodeA" if rank == 0 else "nodeB") / "x.csv")
    res["damaged"] = run(base / "damaged.jsonl", DEDUP_KW)
    # Fewer chunks than ranks: rank 1 has nothing to make, which the report must say.
    res["one_chunk"] = run(base / "one_chunk.csv", n=8)
    # A file from other settings: refused on rank 0, and rank 1 must hear of it instead of hanging.
    res["refused"] = run(base / "other.csv")
    (base / f"rank{rank}.json").write_text(json.dumps(res))
    # Leave together and skip the process group's teardown: once, on an idle CI box, rank 1 aborted in it ("terminate
    # called without an active exception") after writing its results — probably because rank 0, which hosts the
    # store, had already gone. What the test checks is written above; how gloo tears down is not under test.
    dist.barrier()
    os._exit(0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("ranks")
    tiny_model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that float reductions run in the same order
    try:
        model, tok = _load(root / "model")
        labels = _labels()
        sample(model, tok, labels, N, root / "one.csv", **KW)
        sample(model, tok, labels, N, root / "one_dedup.jsonl", **DEDUP_KW)
        handle = _kill_after(model, 50)  # a single process killed after two committed chunks
        with pytest.raises(SimulatedKill):
            sample(model, tok, labels, N, root / "partial.csv", **KW)
        handle.remove()
        (root / "partial_draws.txt").write_text(str(_draws_done(root / "partial.csv")))
        sample(model, tok, labels, 8, root / "other.csv", **KW)
        # A de-duplicating file one process began, then damaged inside its committed rows: rank 0 cannot read them
        # back to know which rows exist, and rank 1 must hear of it instead of waiting.
        handle = _kill_after(model, 10)
        with pytest.raises(SimulatedKill):
            sample(model, tok, labels, N, root / "damaged.jsonl", **DEDUP_KW)
        handle.remove()
        damaged = root / "damaged.jsonl"
        damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
        mp.spawn(_worker, args=(2, free_port(), str(root)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    return root


def _results(root: Path) -> list[dict]:
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_write_the_single_process_file_byte_for_byte(runs: Path) -> None:
    one = (runs / "one.csv").read_bytes()
    assert (runs / "two.csv").read_bytes() == one and one.count(b"\n") > N // 2
    r0, r1 = (r["plain"]["report"] for r in _results(runs))
    assert r0 == r1, "every rank returns rank 0's report"
    assert r0["generated_this_run"] == N and r0["rows_written"] == one.count(b"\r\n") - 1
    assert not list(runs.glob(".two.csv.*.tmp"))


def test_a_rank_without_a_chunk_is_reported(runs: Path) -> None:
    r0, r1 = (r["one_chunk"]["report"] for r in _results(runs))
    assert r0["rows_written"] == 8 and r1["notes"] == r0["notes"]
    assert any(n.startswith("1 of 2 processes had no chunk to make") for n in r0["notes"]), r0["notes"]
    plain = _results(runs)[0]["plain"]["report"]  # 5 chunks for 2 ranks: nobody idle, no such note
    assert not any("no chunk to make" in n for n in plain["notes"])


def test_post_processing_runs_in_chunk_order_across_ranks(runs: Path) -> None:
    assert (runs / "two_dedup.jsonl").read_bytes() == (runs / "one_dedup.jsonl").read_bytes()
    report = _results(runs)[0]["dedup"]["report"]
    assert report["dropped_duplicates"] > 0 and report["replaced"] > 0
    assert report["rows_written"] + report["dropped_duplicates"] + report["dropped_empty"] == \
        report["generated_this_run"] > N  # every generation kept or dropped; top-ups on top of the N


def test_ranks_killed_in_a_top_up_round_resume_it(runs: Path) -> None:
    r0, r1 = _results(runs)
    assert r0["dedup_killed"]["error"] == "SimulatedKill" and "error" in r1["dedup_killed"]
    resumed, whole = r0["dedup_resumed"]["report"], r0["dedup"]["report"]
    assert (runs / "dedup_killed.jsonl").read_bytes() == (runs / "one_dedup.jsonl").read_bytes()
    assert (resumed["replaced"], resumed["topup_rounds"]) == (whole["replaced"], whole["topup_rounds"])
    assert 0 < resumed["generated_this_run"] < whole["generated_this_run"]  # round 0 was not drawn again


def test_killed_ranks_resume_without_regenerating_committed_chunks(runs: Path) -> None:
    r0, r1 = _results(runs)
    assert r0["killed"]["error"] == "SimulatedKill" and "error" in r1["killed"]
    done = r0["draws_after_kill"]
    assert done == 16, done  # the first wave (chunks 0 and 1) was committed before the second failed
    assert r0["resumed"]["report"]["generated_this_run"] == N - done
    assert (runs / "killed.csv").read_bytes() == (runs / "one.csv").read_bytes()


def test_one_rank_failing_stops_both_and_one_process_resumes(runs: Path) -> None:
    r0, r1 = _results(runs)
    assert r1["one_rank_killed"]["error"] == "SimulatedKill"
    assert r0["one_rank_killed"]["error"] == "DpsynthError" and "rank(s) [1]" in r0["one_rank_killed"]["message"]
    done = _draws_done(runs / "half.csv")
    assert done == 16
    model, tok = _load(runs / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a different world size (one process, no torchrun) continues the 2-rank run
        report = sample(model, tok, _labels(), N, runs / "half.csv", **KW)
    finally:
        torch.set_num_threads(threads)
    assert report.generated_this_run == N - done
    assert (runs / "half.csv").read_bytes() == (runs / "one.csv").read_bytes()


def test_two_ranks_continue_a_file_one_process_started(runs: Path) -> None:
    report = _results(runs)[0]["continued"]["report"]
    draws = int((runs / "partial_draws.txt").read_text())
    assert 0 < draws < 32 and 0 < report["resumed_rows"] <= draws
    assert report["generated_this_run"] == N - draws
    assert (runs / "partial.csv").read_bytes() == (runs / "one.csv").read_bytes()


def test_texts_travel_to_rank_zero_without_a_shared_filesystem(runs: Path) -> None:
    assert _results(runs)[0]["unshared"]["report"]["generated_this_run"] == N
    assert (runs / "nodeA" / "x.csv").read_bytes() == (runs / "one.csv").read_bytes()
    assert not (runs / "nodeB").exists()


def test_a_failure_reading_back_the_file_on_rank_zero_reaches_every_rank(runs: Path) -> None:
    r0, r1 = _results(runs)
    assert r0["damaged"]["error"] == "DpsynthError" and "cannot be read back" in r0["damaged"]["message"]
    assert r1["damaged"]["error"] == "DpsynthError" and "stopped on rank 0" in r1["damaged"]["message"]


def test_refusal_on_rank_zero_reaches_every_rank(runs: Path) -> None:
    r0, r1 = _results(runs)
    assert r0["refused"]["error"] == "SamplingSettingsChanged" and "different settings" in r0["refused"]["message"]
    assert r1["refused"]["error"] == "DpsynthError" and "stopped on rank 0" in r1["refused"]["message"]
