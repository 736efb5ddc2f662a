"""The command line: help texts teach, user errors are one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dpsynth.cli import main


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def test_threads_sets_torchs_cpu_threads_for_the_command() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        wanted = 2 if before == 1 else 1  # not what torch already has, or the test could not fail
        code, out = _invoke("--threads", str(wanted), "run", "--help")  # the option acts before the command runs
        assert code == 0 and torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
    code, out = _invoke("--threads", "0", "run", "--help")
    assert code == 2 and "--threads" in out


def test_help_lists_commands_and_run_options_with_defaults() -> None:
    code, out = _invoke("--help")
    assert code == 0 and all(f"  {c} " in out for c in ("run", "demo", "evaluate", "sample"))
    code, out = _invoke("run", "--help")
    assert code == 0 and "--epsilon" in out and "[default: 4.0]" in out and "Examples:" in out
    assert "--no-drop-duplicates" in out and "--no-drop-duplicates" in _invoke("sample", "--help")[1]  # one spelling


def test_run_without_data_is_a_user_error() -> None:
    code, out = _invoke("run", "--out", "x")
    assert code == 2 and out.strip() == "error: --data is required"


def test_evaluate_fast_path(tmp_path: Path) -> None:
    from dpsynth.data.demo import load_demo_dataset

    df = load_demo_dataset(max_records=240, seed=0)
    real, synth = tmp_path / "real.csv", tmp_path / "synth.csv"
    df.iloc[:120].to_csv(real, index=False)
    df.iloc[120:].to_csv(synth, index=False)
    code, out = _invoke("evaluate", "--real", str(real), "--synthetic", str(synth), "--label-columns", "sentiment",
                        "--no-embeddings", "--out", str(tmp_path / "eval"))
    assert code == 0, out
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "report.html").is_file()
    assert "Accuracy" in out or "accuracy" in out


def test_evaluate_missing_column_is_one_line(tmp_path: Path) -> None:
    real = tmp_path / "real.csv"
    pd.DataFrame({"text": ["a b c"] * 20, "label": ["x", "y"] * 10}).to_csv(real, index=False)
    code, out = _invoke("evaluate", "--real", str(real), "--synthetic", str(real), "--label-columns", "lable",
                        "--no-embeddings", "--out", str(tmp_path / "e"))
    assert code == 2 and out.startswith("error:") and len(out.strip().splitlines()) == 1, out


def test_audit_help_and_bad_input() -> None:
    code, out = _invoke("audit", "--help")
    assert code == 0 and "--epsilons" in out and "canar" in out
    code, out = _invoke("audit", "--out", "x")
    assert code == 2 and out.startswith("error:") and "--data" in out


def test_an_interrupt_says_how_to_continue_that_command(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C before the first checkpoint used to advise --resume, which then refused: a dead end."""
    import dpsynth.commands.run
    import dpsynth.commands.sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpsynth.commands.run, "run", interrupted)
    monkeypatch.setattr(dpsynth.commands.sample, "sample_from_run", interrupted)
    out = tmp_path / "r"
    out.mkdir()
    args = ["run", "--data", str(tmp_path / "d.csv"), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "--overwrite" in result.output and "--resume" not in result.output
    (out / "checkpoint").mkdir()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "--resume" in result.output
    result = CliRunner().invoke(main, [*args, "--epsilon", "inf"])  # no checkpoints without DP, whatever the folder
    assert result.exit_code == 130 and "keeps no checkpoint" in result.output and "--resume" not in result.output
    result = CliRunner().invoke(main, ["sample", "--run", str(out), "--num", "3", "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 130 and "appends" in result.output


def test_sample_summary_accounts_for_every_record() -> None:
    from dpsynth.cli import _sample_summary

    line = _sample_summary({"rows_written": 8, "requested": 20, "dropped_empty": 5, "dropped_duplicates": 7,
                            "generated_this_run": 20, "records_per_s": 2.0, "tokens_per_s": 30.0}, Path("o.csv"))
    assert "8 of 20" in line and "5 empty" in line and "7 duplicate" in line and "12 label draws still" in line
    topped = _sample_summary({"rows_written": 20, "requested": 20, "dropped_duplicates": 9, "topup_rounds": 2,
                              "replaced": 9}, Path("o.csv"))
    assert "20 of 20" in topped and "in 2 top-up rounds" in topped and "still without" not in topped
    done = _sample_summary({"rows_written": 20, "requested": 20, "resumed_rows": 20}, Path("o.csv"))
    assert "20 already there" in done and "records/s" not in done
    assert "Nothing was written" in _sample_summary({"rows_written": 0, "requested": 5, "dropped_empty": 5},
                                                    Path("o.csv"))


@pytest.mark.parametrize("rank", [None, "1"])
def test_sigterm_takes_the_ctrl_c_path(tmp_path: Path, rank: str | None) -> None:
    """`kill` or a scheduler's time limit used to end a run silently (exit 143); it now says how to continue —
    once: under torchrun only rank 0 prints the advice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    started = tmp_path / "started"
    script = (
        "import pathlib, time, sys\n"
        "import dpsynth.commands.run as p\n"
        "def slow(*a, **k):\n"
        f"    pathlib.Path({str(started)!r}).write_text('x'); time.sleep(60)\n"
        "p.run = slow\n"
        "from dpsynth.cli import main\n"
        f"main(['run', '--data', 'd.csv', '--out', {str(tmp_path / 'r')!r}])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | ({"RANK": rank} if rank else {})
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert ("interrupted; no checkpoint was written yet" in err) == (rank is None), err
