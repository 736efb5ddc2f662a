"""`dpsynth audit --resume`: an audit interrupted (Ctrl-C) between its ε runs continues without retraining or
rescoring the finished run, ends with the numbers a clean audit gives, and refuses other settings or other data.

(A SIGKILL in the middle of a DP run's training, continued through `dpsynth run --resume`, is in
test_audit_resume_kill.py.)
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dpsynth.commands.audit import AuditConfig, _config_record, _run_state, make_audit_config, run_audit
from dpsynth.config import RunConfig
from dpsynth.data.demo import load_demo_dataset
from dpsynth.errors import DpsynthError
from dpsynth.evaluate import audit_state as rs
from dpsynth.stages.folder import RunFolder
from tests.conftest import sentiment_values


class CtrlCBeforeRun(Console):
    """A console that raises KeyboardInterrupt (what Ctrl-C raises) when the audit announces the given run."""

    def __init__(self, announcement: str) -> None:
        super().__init__(file=io.StringIO(), width=120)
        self.announcement = announcement

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if any(self.announcement in str(o) for o in objects):
            raise KeyboardInterrupt
        super().print(*objects, **kwargs)


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def _cfg(data: Path, out: Path, model: Path, **kw: Any) -> AuditConfig:
    values: dict[str, Any] = dict(data=data, label_columns=["sentiment"], out=out, model=str(model), formats=["phone"],
                                  label_values=sentiment_values(data.parent),
                                  repetitions=[1, 10], num_candidates=30, epochs=1, batch_size=16,
                                  physical_batch_size=16, max_tokens=64, num_samples=4, max_new_tokens=8,
                                  holdout_fraction=0.2, show_progress=False, epsilons=[4.0, float("inf")])
    return AuditConfig(**(values | kw))


def _measured(run: dict[str, Any]) -> dict[str, Any]:
    """What a run measured (not where or how long)."""
    return {k: run[k] for k in ("canaries", "by_repetitions", "membership_inference", "synthetic_records",
                                "epsilon", "delta", "summary")}


def test_interrupted_audit_resumes_reusing_the_finished_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "reviews.csv"
    load_demo_dataset(max_records=60, seed=0).to_csv(data, index=False)
    out = tmp_path / "audit"
    with pytest.raises(KeyboardInterrupt):
        run_audit(_cfg(data, out, tiny_model_dir), console=CtrlCBeforeRun("run 2 of 2"))
    dp = out / "eps-4"
    assert (dp / "run.json").is_file() and (dp / "synthetic.csv").is_file() and (dp / rs.MEASURES_FILE).is_file()
    assert not (out / "eps-inf").exists() and not (out / "audit.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (dp / "run.json", dp / "synthetic.csv", dp / "privacy.json",
                                                dp / rs.MEASURES_FILE, out / "data" / "train_with_canaries.csv")}
    measured_before = json.loads((dp / rs.MEASURES_FILE).read_text())["run"]

    # without --resume the folder is refused, as before; with other settings or other data, --resume is refused
    with pytest.raises(DpsynthError, match="--overwrite.*--resume"):
        run_audit(_cfg(data, out, tiny_model_dir))
    with pytest.raises(DpsynthError, match=r"^--resume: --num-candidates differs .*\(it was 30\)"):
        run_audit(_cfg(data, out, tiny_model_dir, num_candidates=40, resume=True))
    with pytest.raises(DpsynthError, match="--epsilons differs"):
        run_audit(_cfg(data, out, tiny_model_dir, epsilons=[4.0], resume=True))
    edited = tmp_path / "edited.csv"
    edited.write_text(data.read_text().replace("a", "e", 1))
    with pytest.raises(DpsynthError, match="--data file differs"):
        run_audit(_cfg(edited, out, tiny_model_dir, resume=True))
    for message in ("contradict each other", "holds no interrupted audit"):
        with pytest.raises(DpsynthError, match=message):
            if message.startswith("contradict"):
                make_audit_config(data=data, out=out, resume=True, overwrite=True)
            else:
                run_audit(_cfg(data, tmp_path / "empty", tiny_model_dir, resume=True))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "a refused resume must write nothing"

    # the same file under another name is the same data: the resume continues
    moved = tmp_path / "moved.csv"
    shutil.copy(data, moved)
    result = run_audit(_cfg(moved, out, tiny_model_dir, resume=True), console=_quiet())
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "the finished run was trained or scored again"
    report = json.loads((out / "audit.json").read_text())
    assert report["resume"]["resumed"] and report["resume"]["runs"] == {"4": "reused", "inf": "trained"}
    dp_run, nodp_run = report["runs"]
    assert dp_run["training"] == "reused" and _measured(dp_run) == _measured(measured_before)
    assert result.run_dirs == [dp, out / "eps-inf"]

    # the run trained after the resume equals a clean audit's (everything is seeded)
    clean = run_audit(_cfg(data, tmp_path / "clean", tiny_model_dir, epsilons=[float("inf")]), console=_quiet())
    assert _measured(nodp_run) == _measured(clean.report["runs"][0])
    assert (out / "eps-inf" / "synthetic.csv").read_bytes() == (tmp_path / "clean" / "eps-inf" /
                                                                "synthetic.csv").read_bytes()
    assert report["canaries"] == clean.report["canaries"]

    # resuming a finished audit reuses everything
    again = run_audit(_cfg(data, out, tiny_model_dir, resume=True), console=_quiet())
    assert again.report["resume"]["runs"] == {"4": "reused", "inf": "reused"}
    assert [_measured(r) for r in again.report["runs"]] == [_measured(r) for r in report["runs"]]


def test_run_states(tmp_path: Path) -> None:
    """How a resume classifies an ε run folder."""
    cfg = RunConfig(data=tmp_path / "d.csv", out=tmp_path / "r", epsilon=4.0)
    run = tmp_path / "r"
    folder = RunFolder(run)
    assert _run_state(folder, cfg) == "absent"
    run.mkdir()
    (run / "privacy.json").write_text("{}")  # a run stopped before its first checkpoint
    assert _run_state(folder, cfg) == "started"
    (run / "checkpoint").mkdir()
    assert _run_state(folder, cfg) == "checkpoint"
    (run / "synthetic.csv").write_text("text\nx\n")
    (run / "run.json").write_text(json.dumps({"config": cfg.model_dump(mode="json") | {"resume": True}}))
    assert _run_state(folder, cfg) == "finished"  # --resume/--out/--data may differ, nothing else
    (run / "run.json").write_text(json.dumps({"config": cfg.model_dump(mode="json") | {"seed": 1}}))
    with pytest.raises(DpsynthError, match="other settings"):
        _run_state(folder, cfg)


def test_settings_fingerprint_ignores_only_what_does_not_change_results(tmp_path: Path) -> None:
    base = AuditConfig(data=tmp_path / "a.csv", out=tmp_path / "o")
    def settings(cfg: AuditConfig) -> dict[str, Any]:
        return rs.audit_settings(_config_record(cfg), device_resolved="cpu", num_candidates_resolved=1000)

    same = base.model_copy(update={"data": tmp_path / "b.csv", "out": tmp_path / "p", "show_progress": False,
                                   "score_batch_size": 3, "resume": True, "checkpoint_every": 5})
    assert settings(same) == settings(base)
    for change in ({"seed": 1}, {"user_column": "u"}, {"max_records_per_user": 2}, {"epsilons": [4.0]},
                   {"model": "m"}):
        assert settings(base.model_copy(update=change)) != settings(base), change
    rs.write_state(tmp_path, settings(base), "abc")
    assert rs.check_state(tmp_path, settings(same), "abc") == rs.fingerprint(settings(base), "abc")
    with pytest.raises(DpsynthError, match="--seed differs"):
        rs.check_state(tmp_path, settings(base.model_copy(update={"seed": 1})), "abc")
