"""Data-parallel throughput: `dpsynth run` in one process vs under `torchrun` with K ranks, same logical batch.

Why a benchmark of the real command: what a user launching `torchrun -m dpsynth run` gets is the sum of sharding,
per-rank clipping, the flattened all-reduce, rank 0's noise and broadcast, and the sharded sampling with its merge.
Both modes train on the same data with the same seeded Poisson batches (`--no-secure-rng`), so they do the same
work step for step; the ratio of their step times is the data-parallel speed-up, and equal ε / steps / rows are
checked, not assumed.

On a CPU the modes share a fixed number of threads (`--threads`, default one per core): one process with T
threads against K processes with T/K each — the question a CPU cluster user asks. On CUDA, one GPU against K.

    python bench/distributed.py --ranks 2 --records 512 --batch-size 128 --out bench/out/distributed.json
    python bench/distributed.py --quick   # tiny random model, 64 records: a smoke test in about a minute

Memory: the peak resident set (VmHWM) of every process of a mode, polled from /proc (Linux); on CUDA the
device memory is the train-step benchmark's job.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/distributed.py` from the repo root

from bench._common import machine_info, now_iso, package_versions, process_peak_rss_bytes  # noqa: E402

DEFAULT_OUT = Path("bench/out/distributed.json")
DEFAULT_RUNS = Path("bench/out/distributed")


@dataclass
class DistBenchConfig:
    ranks: int = 2
    records: int = 512
    batch_size: int = 128
    epochs: float = 1.0
    num_samples: int = 256
    max_tokens: int = 64
    max_new_tokens: int = 40
    physical_batch_size: int = 8
    sample_batch_size: int = 64
    epsilon: float = 4.0
    finetune: str = "lora"
    model: str | None = None  # None: the bundled SmolLM2-135M
    device: str = "cpu"
    threads: int = 0  # 0: one per core
    rounds: int = 1
    seed: int = 0
    runs_dir: Path = DEFAULT_RUNS
    quick: bool = False

    def total_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


# ---------------------------------------------------------------- one launch, its processes' memory
class _PeakRss:
    """Polls VmHWM (the kernel's per-process high-water mark) of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid, self.every_s = pid, every_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _descendants(self) -> list[int]:
        todo, seen = [self.pid], []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
        return seen

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in self._descendants():
                peak = process_peak_rss_bytes(pid)
                if peak is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), peak)
            self._stop.wait(self.every_s)

    def stop(self) -> dict[str, float | None]:
        self._stop.set()
        self._thread.join()
        # The launcher (torchrun's agent) is small; the ranks are the processes that load the model.
        sizes = sorted(self.peaks.values(), reverse=True)
        gib = 1024**3
        return {"max_process_gib": round(sizes[0] / gib, 3) if sizes else None,
                "processes_seen": len(sizes)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(cfg: DistBenchConfig, data: Path, values: Path, out: Path) -> list[str]:
    """`dpsynth run` arguments shared by both modes (seeded batches and noise: both do the same work)."""
    args = ["run", "--data", str(data), "--text-column", "text", "--label-columns", "sentiment",
            "--label-values", str(values), "--epsilon", str(cfg.epsilon), "--epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--physical-batch-size", str(cfg.physical_batch_size),
            "--max-tokens", str(cfg.max_tokens), "--num-samples", str(cfg.num_samples),
            "--max-new-tokens", str(cfg.max_new_tokens), "--sample-batch-size", str(cfg.sample_batch_size),
            "--finetune", cfg.finetune, "--seed", str(cfg.seed), "--no-secure-rng", "--device", cfg.device,
            "--out", str(out), "--overwrite"]
    if cfg.model:
        args += ["--model", cfg.model]
    if cfg.quick:
        args += ["--learning-rate", "1e-3"]
    return args


def launch(cfg: DistBenchConfig, ranks: int, data: Path, values: Path, out: Path, log: Path) -> dict[str, Any]:
    """One `dpsynth run` (ranks = 1: a plain process; else torchrun) → its run.json figures, wall time, memory."""
    threads = max(1, cfg.total_threads() // ranks)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    dpsynth = ["-m", "dpsynth", "--threads", str(threads), *run_args(cfg, data, values, out)]
    if ranks == 1:
        cmd = [sys.executable, *dpsynth]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *dpsynth]
    start = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        memory = _PeakRss(proc.pid)
        code = proc.wait()
        peaks = memory.stop()
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"`dpsynth run` with {ranks} rank(s) failed (exit {code}); log {log}:\n{tail}")
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    ledger = json.loads((out / "privacy.json").read_text(encoding="utf-8"))
    training, sampling = record["training"], record["sampling"]
    steps = training["steps"]
    return {
        "ranks": ranks, "threads_per_rank": threads if cfg.device == "cpu" else None,
        "world_size": record.get("world_size", 1), "device": record["device"], "wall_s": round(wall, 2),
        "load_and_encode_s": round(record["timings"]["load_and_encode_s"], 2),
        "train_s": round(training["seconds"], 2), "steps": steps,
        "train_step_s": round(training["seconds"] / steps, 3) if steps else None,
        "examples_per_s": round(cfg.batch_size * steps / training["seconds"], 2) if steps else None,
        "sample_s": round(sampling["seconds"], 2), "rows_written": sampling["rows_written"],
        "records_per_s": sampling.get("records_per_s"), "tokens_per_s": sampling.get("tokens_per_s"),
        "new_tokens": sampling.get("new_tokens"), "epsilon": ledger["epsilon"], "peak_rss": peaks,
    }


# ---------------------------------------------------------------- the benchmark
def prepare(cfg: DistBenchConfig) -> tuple[Path, Path]:
    from dpsynth.data.demo import LABELS, load_demo_dataset

    cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.runs_dir / "train.csv"
    frame = load_demo_dataset(max_records=cfg.records, seed=cfg.seed)
    if len(frame) < cfg.records:
        raise SystemExit(f"the demo data has only {len(frame)} records; ask for fewer")
    frame.to_csv(data, index=False)
    values = cfg.runs_dir / "label_values.json"  # public label values: no DP threshold on a small run
    values.write_text(json.dumps({"sentiment": list(LABELS)}))
    if cfg.quick and not cfg.model:
        from dpsynth.models.tiny import save_tiny_model_folder

        cfg.model = str(save_tiny_model_folder(cfg.runs_dir / "tiny", kind="llama"))
    return data, values


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def run_benchmark(cfg: DistBenchConfig, out: Path | None = DEFAULT_OUT) -> dict[str, Any]:
    if cfg.ranks < 2:
        raise SystemExit("--ranks must be at least 2 (one process is the reference it is compared with)")
    if cfg.device == "cuda":
        import torch

        if torch.cuda.device_count() < cfg.ranks:
            raise SystemExit(f"--ranks {cfg.ranks} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    data, values = prepare(cfg)
    rounds: list[dict[str, Any]] = []
    for r in range(cfg.rounds):  # alternate the modes so a busy machine hurts both alike
        single = launch(cfg, 1, data, values, cfg.runs_dir / f"r{r}_single", cfg.runs_dir / f"r{r}_single.log")
        multi = launch(cfg, cfg.ranks, data, values, cfg.runs_dir / f"r{r}_ranks{cfg.ranks}",
                       cfg.runs_dir / f"r{r}_ranks{cfg.ranks}.log")
        rounds.append({"single": single, "ranks": multi})
        print(f"round {r + 1}/{cfg.rounds}: step {single['train_step_s']} s (1 process) vs "
              f"{multi['train_step_s']} s ({cfg.ranks} ranks); sampling {single['records_per_s']} vs "
              f"{multi['records_per_s']} records/s", flush=True)
    singles, multis = [r["single"] for r in rounds], [r["ranks"] for r in rounds]
    step_1, step_k = _median(singles, "train_step_s"), _median(multis, "train_step_s")
    rec_1, rec_k = _median(singles, "records_per_s"), _median(multis, "records_per_s")
    runs = singles + multis
    epsilons = [x["epsilon"] for x in runs]
    checks = {
        "same_steps": len({x["steps"] for x in runs}) == 1,
        "same_epsilon": max(epsilons) - min(epsilons) < 1e-9,
        "same_rows": len({x["rows_written"] for x in runs}) == 1,
        "world_size_k": all(x["world_size"] == cfg.ranks for x in multis),
    }
    result = {
        "benchmark": "distributed", "created": now_iso(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        | {"total_threads": cfg.total_threads() if cfg.device == "cpu" else None},
        "machine": machine_info(cfg.device), "versions": package_versions(("torch", "transformers", "peft")),
        "rounds": rounds,
        "median": {"single_train_step_s": step_1, "ranks_train_step_s": step_k,
                   "train_speedup": round(step_1 / step_k, 3) if step_1 and step_k else None,
                   "single_records_per_s": rec_1, "ranks_records_per_s": rec_k,
                   "sample_speedup": round(rec_k / rec_1, 3) if rec_1 and rec_k else None},
        "checks": checks,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="processes under torchrun (default 2)")
    p.add_argument("--records", type=int, help="private records from the demo data (default 512)")
    p.add_argument("--batch-size", type=int, help="expected logical batch (default 128)")
    p.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    p.add_argument("--num-samples", type=int, help="synthetic records (default 256)")
    p.add_argument("--max-tokens", type=int, help="training length (default 64)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per synthetic record (default 40)")
    p.add_argument("--physical-batch-size", type=int, help="examples per forward pass and rank (default 8)")
    p.add_argument("--sample-batch-size", type=int, help="prompts per generation batch (default 64)")
    p.add_argument("--finetune", choices=("lora", "full"))
    p.add_argument("--model", help="local model folder (default: bundled SmolLM2-135M)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="CPU threads shared by each mode's processes (default: cores)")
    p.add_argument("--rounds", type=int, help="alternating rounds of the two modes (default 1)")
    p.add_argument("--out-dir", type=Path, help=f"folder for the runs (default {DEFAULT_RUNS})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny random model, 64 records: a smoke test")
    a = p.parse_args(argv)
    cfg = DistBenchConfig(records=64, batch_size=16, num_samples=64, max_tokens=32, max_new_tokens=8,
                          physical_batch_size=4, finetune="full", quick=True) if a.quick else DistBenchConfig()
    given = {k: v for k, v in vars(a).items() if v is not None and k not in {"quick", "out", "out_dir"}}
    cfg = replace(cfg, **given)
    if a.out_dir is not None:
        cfg.runs_dir = a.out_dir
    result = run_benchmark(cfg, a.out)
    m = result["median"]
    print(json.dumps({"median": m, "checks": result["checks"]}, indent=1))
    print(f"wrote {a.out}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
