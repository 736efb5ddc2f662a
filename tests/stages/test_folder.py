"""The run folder's rules: every refusal says what to do next, and none of them leads back to itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsynth.errors import DpsynthError
from dpsynth.runtime.files import check_output_folder
from dpsynth.stages import folder as outputs
from dpsynth.stages.folder import RunFolder


def _refusal(out: Path, **kw: bool) -> str:
    with pytest.raises(DpsynthError) as err:
        RunFolder(out).check(overwrite=kw.get("overwrite", False), resume=kw.get("resume", False))
    return str(err.value)


def test_resume_refusals_point_somewhere_that_works(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / outputs.PRIVACY).write_text("{}")  # interrupted before its first checkpoint
    assert "--overwrite" in _refusal(out, resume=True)
    assert "--overwrite" in _refusal(out)  # and without --resume, --overwrite is offered too
    RunFolder(out).check(overwrite=True, resume=False)  # which is accepted
    (out / outputs.RUN).write_text("{}")  # finished
    assert "dpsynth sample" in _refusal(out, resume=True)
    finished = _refusal(out)  # a finished run cannot be resumed: not offered
    assert "holds a finished run" in finished and "--resume" not in finished and "--overwrite" in finished
    (out / outputs.CHECKPOINT).mkdir()  # interrupted after a checkpoint: resumable
    RunFolder(out).check(overwrite=False, resume=True)
    assert f"dpsynth run --resume --out {out}" in _refusal(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "drop --resume" in _refusal(empty, resume=True)


def test_one_output_folder_rule_for_every_command(tmp_path: Path) -> None:
    """A file is never an output folder; a folder holding what the command writes is replaced only with
    --overwrite; unrelated files do not block a command that names what it writes."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(DpsynthError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f", overwrite=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check_output_folder(out, overwrite=False, conflicts=["metrics.json"])
    with pytest.raises(DpsynthError, match="already holds files; choose"):
        check_output_folder(out, overwrite=False)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(DpsynthError, match=r"already holds files \(metrics.json\)"):
        check_output_folder(out, overwrite=False, conflicts=["metrics.json"])
    check_output_folder(out, overwrite=True, conflicts=["metrics.json"])
