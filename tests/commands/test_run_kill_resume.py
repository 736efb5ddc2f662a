"""Kill a real `dpsynth run` with SIGKILL mid-training, then `--resume` it.

What must hold: the ledger never counts fewer noisy steps than were taken (steps after the last checkpoint stay
counted), the resumed run stops when the ledger reaches the planned number of steps (so ε stays within the
target), and the finished folder is complete with its checkpoint removed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpsynth.data.demo import load_demo_dataset
from dpsynth.models.tiny import save_tiny_model_folder
from tests.conftest import dpsgd_steps_in_ledger


@pytest.mark.timeout(600)
def test_kill_minus_nine_then_resume(tmp_path: Path) -> None:
    model = save_tiny_model_folder(tmp_path / "tiny", kind="llama")
    data = tmp_path / "reviews.csv"
    load_demo_dataset(max_records=200, seed=0).to_csv(data, index=False)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "dpsynth", "run", "--data", str(data), "--label-columns", "sentiment",
            "--model", str(model), "--out", str(out), "--epochs", "3", "--batch-size", "10",
            "--max-tokens", "32", "--checkpoint-every", "7", "--num-samples", "6", "--max-new-tokens", "4"]
    planned = math.ceil(3 / (10 / 200))  # 60 steps
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while dpsgd_steps_in_ledger(out) < 24 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    spent_at_kill = dpsgd_steps_in_ledger(out)
    assert 24 <= spent_at_kill < planned
    assert (out / "checkpoint" / "state.pt").is_file()
    assert not (out / "synthetic.csv").exists() and not (out / "run.json").exists()

    # Plain re-run into the same folder is refused: it would silently spend a second budget.
    refused = subprocess.run(args, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    # Another file with as many records is not the data the first steps trained on (the path itself may change).
    other = tmp_path / "other.csv"
    load_demo_dataset(max_records=200, seed=1).to_csv(other, index=False)
    refused = subprocess.run([sys.executable, "-m", "dpsynth", "run", "--resume", "--out", str(out), "--data",
                              str(other)], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "not the file the interrupted run trained on" in refused.stderr, refused.stderr

    # The interrupted run paid for one DP label histogram: with its file gone, a resume must not draw a second.
    labels = out / "label_distribution.json"
    hidden = labels.rename(tmp_path / "labels.json")
    ledger_at_kill = (out / "privacy.json").read_text()
    refused = subprocess.run([sys.executable, "-m", "dpsynth", "run", "--resume", "--out", str(out)], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "label_distribution.json is missing" in refused.stderr, refused.stderr
    assert (out / "privacy.json").read_text() == ledger_at_kill
    hidden.rename(labels)

    # `--resume --out` alone: the options come from the checkpoint (a user should not have to repeat them all).
    done = subprocess.run([sys.executable, "-m", "dpsynth", "run", "--resume", "--out", str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ledger = json.loads((out / "privacy.json").read_text())
    assert dpsgd_steps_in_ledger(out) == planned, "the resumed run stops when the planned budget is spent"
    assert ledger["epsilon"] <= 4.0 + 1e-6
    run_record = json.loads((out / "run.json").read_text())
    ckpt_step = run_record["training"]["resumed_from_step"]
    assert ckpt_step % 7 == 0 and ckpt_step <= spent_at_kill
    # Steps lost after the checkpoint were paid for: the model took fewer updates than the ledger counts.
    assert run_record["training"]["steps_this_session"] == planned - spent_at_kill
    assert (out / "synthetic.csv").is_file() and not (out / "checkpoint").exists()
