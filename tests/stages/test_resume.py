"""--resume reads back what the interrupted run stored: its settings (merged under flags, a changed setting refused
by name), the folder's state, and nothing from a run that has finished or never checkpointed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsynth.config import RunConfig
from dpsynth.errors import DpsynthError
from dpsynth.runtime.files import write_json_atomic
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.resume import refuse_changed_settings, run_config_from_sources


def test_resume_reads_the_settings_stored_with_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dpsynth run --resume --out DIR` alone continues a run: its options come from the checkpoint, made absolute
    so that another working directory finds the same files; options given again win."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("text\nx\n")
    original = RunConfig(data="d.csv", out="runs/r1", label_columns=["a", "b"], epsilon=2, batch_size=10, seed=7)
    settings = original.resume_settings()
    assert settings["data"] == str(tmp_path / "d.csv") and "out" not in settings and "resume" not in settings
    write_json_atomic(RunFolder(tmp_path / "runs/r1").resume_settings, settings)

    monkeypatch.chdir(tmp_path / "runs")
    resumed = run_config_from_sources(None, {"out": str(tmp_path / "runs/r1"), "resume": True, "num_samples": 5})
    assert resumed.data == tmp_path / "d.csv" and resumed.label_columns == ["a", "b"]
    assert (resumed.epsilon, resumed.batch_size, resumed.seed, resumed.num_samples) == (2, 10, 7, 5)
    assert resumed.resume and resumed.out == tmp_path / "runs/r1"
    # Without --resume nothing is read from a checkpoint.
    with pytest.raises(DpsynthError, match="--data is required"):
        run_config_from_sources(None, {"out": str(tmp_path / "runs/r1")})


def test_resume_precedence_and_refusals(tmp_path: Path) -> None:
    """Stored settings win over the TOML file (they include what flags changed then), flags win over them; a folder
    without stored settings gets the reason, not a bare '--data is required'."""
    run_dir = tmp_path / "r"
    settings = RunConfig(data=tmp_path / "d.csv", out=run_dir, epsilon=8, seed=3).resume_settings()
    write_json_atomic(RunFolder(run_dir).resume_settings, settings)
    toml = tmp_path / "run.toml"
    toml.write_text('epsilon = 4\nseed = 1\ntop_k = 7\n')
    cfg = run_config_from_sources(toml, {"out": str(run_dir), "resume": True, "seed": 9})
    assert (cfg.epsilon, cfg.seed, cfg.top_k) == (8, 9, 50)
    # An option that would change what was trained is refused by name when the run starts (the same value given
    # again is fine).
    def resumed(**flags: object) -> RunConfig:
        config = run_config_from_sources(None, {"out": str(run_dir), "resume": True, **flags})
        refuse_changed_settings(config)
        return config

    with pytest.raises(DpsynthError, match=r"--resume continues the run as it started, so --epsilon cannot change "
                                           r"\(it was 8.0, now 4.0\)"):
        resumed(epsilon="4")
    with pytest.raises(DpsynthError, match="--lora-rank cannot change"):
        resumed(lora_rank=4)
    assert resumed(epsilon="8", top_p=0.5, data=str(tmp_path / "moved.csv")).top_p == 0.5
    # The default given explicitly is no change (the run started without the flag); another value is.
    assert resumed(epsilon="8", epochs=4, lr_schedule="constant").epochs == 4
    with pytest.raises(DpsynthError, match="--lr-schedule cannot change"):
        resumed(epsilon="8", lr_schedule="linear")
    # A RunConfig built in Python meets the same rule (it skips run_config_from_sources).
    with pytest.raises(DpsynthError, match="--epsilon cannot change"):
        refuse_changed_settings(RunConfig(data=tmp_path / "d.csv", out=run_dir, resume=True))
    refuse_changed_settings(RunConfig(data=tmp_path / "d.csv", out=run_dir, resume=True, epsilon=8, seed=3))

    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "run.json").write_text("{}")
    with pytest.raises(DpsynthError, match="has finished"):
        run_config_from_sources(None, {"out": str(finished), "resume": True})
    old = tmp_path / "old"
    (old / "checkpoint").mkdir(parents=True)
    with pytest.raises(DpsynthError, match="missing or unreadable"):
        run_config_from_sources(None, {"out": str(old), "resume": True})
    assert run_config_from_sources(None, {"out": str(old), "resume": True, "data": "d.csv"}).data == Path("d.csv")
