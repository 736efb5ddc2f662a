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
        ({"data": "a", "out": "o", "max_new_tokens": 4, "min_new_tokens": 5}, "--min-new-tokens"),
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
    bad.write_text('data = "a.csv"\nout = "o"\nlerning-rate = 1e-3\n')  # named with the file, as written there
    with pytest.raises(DpsynthError, match=r"bad.toml has an unknown setting 'lerning-rate'"):
        config_from_sources(bad, {})


def test_default_batch_uses_only_n() -> None:
    cfg = RunConfig(data="a", out="o")
    assert cfg.resolved_batch_size(100_000) == 1000
    assert cfg.resolved_batch_size(5000) == 625  # q = 1/8 up to N = 8,000
    assert cfg.resolved_batch_size(800) == 100
    assert RunConfig(data="a", out="o", epsilon="inf").resolved_batch_size(800) == 32


def test_default_learning_rate_grows_with_the_dp_batch_within_the_measured_range() -> None:
    lora = RunConfig(data="a", out="o")
    assert lora.resolved_learning_rate(100) == pytest.approx(2e-3)  # N = 800: batch 100
    assert lora.resolved_learning_rate(250) == pytest.approx(1e-2)  # N = 2,000: batch 250
    assert lora.resolved_learning_rate(10) == pytest.approx(2e-3)  # never below, nor above, what was measured
    assert lora.resolved_learning_rate(256) == pytest.approx(1e-2)
    assert lora.resolved_learning_rate(175) == pytest.approx(6e-3)  # linear in between
    assert RunConfig(data="a", out="o", epsilon="inf").resolved_learning_rate(32) == pytest.approx(2e-3)
    assert RunConfig(data="a", out="o", finetune="full").resolved_learning_rate(250) == pytest.approx(1e-4)
    assert RunConfig(data="a", out="o", learning_rate=1e-2).resolved_learning_rate(250) == 1e-2


# ------------------------------------------------------------------ settings `dpsynth audit` passes to `dpsynth run`

# A valid value other than the default for every run setting: a setting added to RUN_SETTINGS needs one here.
_NOT_DEFAULT = {
    "text_column": "body", "label_columns": ["a", "b"], "user_column": "user", "max_records_per_user": 3,
    "drop_empty": True, "max_tokens": 64, "loss_on_prefix": True, "model": "some/model", "finetune": "full",
    "lora_rank": 4, "lora_targets": ["q_proj"], "delta": 1e-6, "clip_norm": 0.5, "label_distribution": "uniform",
    "label_values": Path("values.json"),
    "epochs": 1.5, "batch_size": 16, "physical_batch_size": 2, "learning_rate": 1e-3, "lr_schedule": "linear",
    "checkpoint_every": 5,
    "num_samples": 7, "max_new_tokens": 32, "sample_batch_size": 8, "seed": 3, "device": "cpu", "precision": "fp32",
}


def test_audit_declares_every_run_setting_exactly_as_run_does() -> None:
    """One definition: a run setting missing from AuditConfig, or with another type, default, bound or help text
    there, fails here."""
    from dpsynth.commands.audit import AuditConfig
    from dpsynth.config import RUN_SETTINGS

    run_fields, audit_fields = RunConfig.model_fields, AuditConfig.model_fields
    for name in (*RUN_SETTINGS, "data"):
        assert name in audit_fields, f"`dpsynth audit` does not accept the run setting --{name.replace('_', '-')}"
        r, a = run_fields[name], audit_fields[name]
        assert a.annotation == r.annotation, name
        assert a.is_required() == r.is_required(), name
        assert a.get_default(call_default_factory=True) == r.get_default(call_default_factory=True), name
        assert a.metadata == r.metadata, name  # bounds (ge, gt, le, lt)
        assert a.description.startswith(r.description), name  # the audit may only add a sentence
    # A field named like a run field that is not passed through would silently be ignored by every run; only the
    # audit's own folder options may share a name without sharing the meaning.
    own = {"out", "overwrite", "resume"}
    assert set(audit_fields) & set(run_fields) == {*RUN_SETTINGS, "data"} | own
    assert "audit" not in run_fields["seed"].description  # the audit's notes stay in the audit's help


def test_audit_passes_every_run_setting_to_its_runs(tmp_path: Path) -> None:
    from dpsynth.commands.audit import AuditConfig, _run_config
    from dpsynth.config import RUN_SETTINGS

    assert set(_NOT_DEFAULT) == set(RUN_SETTINGS)
    defaults = RunConfig(data="a", out="o")
    assert all(getattr(defaults, k) != v for k, v in _NOT_DEFAULT.items())
    cfg = AuditConfig(data=tmp_path / "mine.csv", out=tmp_path / "audit", resume=True, **_NOT_DEFAULT)
    run = _run_config(cfg, tmp_path / "train.csv", tmp_path / "audit" / "eps-2", 2.0)
    assert run.model_dump(include=set(RUN_SETTINGS)) == _NOT_DEFAULT
    assert (run.data, run.out, run.epsilon) == (tmp_path / "train.csv", tmp_path / "audit" / "eps-2", 2.0)
    assert not run.resume and not run.overwrite  # the audit decides those per run


def test_one_column_cannot_play_two_roles() -> None:
    from dpsynth.commands.audit import make_audit_config

    for bad, needle in [({"label_columns": "a,a"}, "listed twice"), ({"user_column": "a", "label_columns": "a"},
                                                                      "user column must differ")]:
        with pytest.raises(DpsynthError, match=needle):
            config_from_sources(None, {"data": "d", "out": "o"} | bad)
        with pytest.raises(DpsynthError, match=needle):
            make_audit_config(data="d", out="o", **bad)
