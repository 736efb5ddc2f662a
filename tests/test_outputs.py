"""The run folder's rules: every refusal says what to do next, and none of them leads back to itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsynth import outputs
from dpsynth.errors import DpsynthError


def _refusal(out: Path, **kw: bool) -> str:
    with pytest.raises(DpsynthError) as err:
        outputs.check_output_folder(out, overwrite=kw.get("overwrite", False), resume=kw.get("resume", False))
    return str(err.value)


def test_resume_refusals_point_somewhere_that_works(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / outputs.PRIVACY).write_text("{}")  # interrupted before its first checkpoint
    assert "--overwrite" in _refusal(out, resume=True)
    assert "--overwrite" in _refusal(out)  # and without --resume, --overwrite is offered too
    outputs.check_output_folder(out, overwrite=True, resume=False)  # which is accepted
    (out / outputs.RUN).write_text("{}")  # finished
    assert "dpsynth sample" in _refusal(out, resume=True)
    finished = _refusal(out)  # a finished run cannot be resumed: not offered
    assert "holds a finished run" in finished and "--resume" not in finished and "--overwrite" in finished
    (out / outputs.CHECKPOINT).mkdir()  # interrupted after a checkpoint: resumable
    outputs.check_output_folder(out, overwrite=False, resume=True)
    assert f"dpsynth run --resume --out {out}" in _refusal(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "drop --resume" in _refusal(empty, resume=True)
