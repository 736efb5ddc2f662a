"""Kill a real `dpsynth audit` (user-level, ε = ∞ then ε = 4) with SIGKILL in the middle of its DP run's training,
then `--resume` it: the finished ε = ∞ run is reused untouched, the DP run continues from its checkpoint through
`dpsynth run --resume` (its spent steps stay counted, ε stays within the target), and the audit completes."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from dpsynth.commands.audit import make_audit_config, run_audit
from dpsynth.data.demo import load_demo_dataset
from dpsynth.evaluate import audit_state as rs
from dpsynth.models.tiny import save_tiny_model_folder
from tests.conftest import dpsgd_steps_in_ledger, sentiment_values


@pytest.mark.timeout(300)
def test_kill_minus_nine_during_the_dp_run_then_resume(tmp_path: Path) -> None:
    model = save_tiny_model_folder(tmp_path / "tiny", kind="llama")
    data = tmp_path / "reviews.csv"
    df = load_demo_dataset(max_records=72, seed=0)
    df["user"] = [f"u{i // 4}" for i in range(len(df))]  # 18 users
    df.to_csv(data, index=False)
    out = tmp_path / "audit"
    # 14 training users + 2 canary users = 16 units; q = 8/16, 2 epochs: 4 DP steps, a checkpoint every 2
    flags = {"data": str(data), "out": str(out), "model": str(model), "label_columns": "sentiment",
             "label_values": str(sentiment_values(tmp_path)),
             "user_column": "user", "max_records_per_user": "4", "epsilons": "inf,4", "formats": "phone",
             "repetitions": "1,10", "num_candidates": "20", "epochs": "2", "batch_size": "8",
             "physical_batch_size": "16", "max_tokens": "48", "num_samples": "4", "max_new_tokens": "8",
             "holdout_fraction": "0.2", "checkpoint_every": "2"}
    args = [sys.executable, "-m", "dpsynth", "audit", "--no-show-progress"]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", v]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    dp, nodp = out / "eps-4", out / "eps-inf"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while dpsgd_steps_in_ledger(dp) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the audit ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    spent_at_kill = dpsgd_steps_in_ledger(dp)
    assert (nodp / "run.json").is_file() and (nodp / rs.MEASURES_FILE).is_file()
    assert (dp / "checkpoint").is_dir() and not (dp / "run.json").exists() and not (out / "audit.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (nodp / "run.json", nodp / "synthetic.csv", nodp / rs.MEASURES_FILE)}

    cfg = make_audit_config(**flags, resume=True, show_progress=False)
    result = run_audit(cfg, console=Console(file=io.StringIO()))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "the finished ε = ∞ run was redone"
    assert result.report["resume"]["runs"] == {"inf": "reused", "4": "resumed"}
    run_record = json.loads((dp / "run.json").read_text())
    assert run_record["training"]["resumed_from_step"] in (2, 4)
    assert run_record["training"]["steps_this_session"] == 4 - spent_at_kill
    ledger = json.loads((dp / "privacy.json").read_text())
    assert dpsgd_steps_in_ledger(dp) == 4 and ledger["epsilon"] <= 4.0 + 1e-6 and ledger["unit"] == "user"
    assert not (dp / "checkpoint").exists() and (out / "audit.json").is_file()
    dp_run = result.report["runs"][1]
    assert dp_run["training"] == "resumed" and math.isclose(dp_run["epsilon"], ledger["epsilon"])
    assert dp_run["membership_inference"]["unit"] == "user"
