"""RunConfig: one validated object from flags and TOML, with errors phrased for the command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpsynth.config import RunConfig, config_from_sources
from dpsynth.errors import DpsynthError


def test_flags_override_toml(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('data = "a.csv"\nout = "o"\nepsilon = 8\nlabel-columns = ["x", "y"]\n')
    cfg = config_from_sources(toml, {"epsilon": "2", "out": None})
    assert cfg.epsilon == 2.0 and cfg.label_columns == ["x", "y"] and cfg.out == Path("o")


def test_inf_epsilon_means_no_dp() -> None:
    cfg = RunConfig(data="a.csv", out="o", epsilon="inf")
    assert math.isinf(cfg.epsilon) and not cfg.private


def test_comma_separated_labels() -> None:
    assert RunConfig(data="a", out="o", label_columns="a, b").label_columns == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"out": "o"}, "--data is required"),
        ({"data": "a", "out": "o", "epsilon": "-1"}, "--epsilon"),
        ({"data": "a", "out": "o", "bogus": 1}, "unknown option --bogus"),
        ({"data": "a", "out": "o", "label_columns": "text"}, "cannot also be a label column"),
        ({"data": "a", "out": "o", "resume": True, "overwrite": True}, "contradict"),
    ],
)
def test_errors_are_one_sentence(overrides: dict, needle: str) -> None:
    with pytest.raises(DpsynthError, match=needle) as err:
        config_from_sources(None, overrides)
    assert "\n" not in str(err.value)


def test_bad_toml_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("data = \n")
    with pytest.raises(DpsynthError, match="not valid TOML"):
        config_from_sources(bad, {})


def test_default_batch_uses_only_n() -> None:
    cfg = RunConfig(data="a", out="o")
    assert cfg.resolved_batch_size(100_000) == 256
    assert cfg.resolved_batch_size(800) == 100
    assert RunConfig(data="a", out="o", epsilon="inf").resolved_batch_size(800) == 32
