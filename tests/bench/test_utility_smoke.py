"""Smoke test of the utility benchmark: the whole `--quick` path in-process (tiny random model, 60 demo records)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench.utility import (
    UtilityBenchConfig,
    build_config,
    epsilon_tag,
    lift,
    main,
    parse_epsilons,
    render_table,
    run_benchmark,
    summarise,
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("utility")
    # ε = 1e-6 is out of reach for any noise level: it must become an error entry, not stop the other runs.
    cfg = UtilityBenchConfig.quick_defaults(runs_dir=tmp / "runs")
    cfg.epsilons = (math.inf, 4.0, 1e-6)
    out = tmp / "utility.json"
    return run_benchmark(cfg, out, quiet=True), out

def test_json_has_three_accuracies_and_the_ratios(report: tuple[dict, Path]) -> None:
    result, out = report
    on_disk = json.loads(out.read_text())
    assert on_disk["accuracy"] == result["accuracy"]
    for name in ("real", "eps_inf", "eps_4"):
        acc = on_disk["accuracy"][name]["sentiment"]
        f1 = on_disk["macro_f1"][name]["sentiment"]
        assert 0.0 <= acc <= 1.0 and 0.0 <= f1 <= 1.0
    acc = on_disk["accuracy"]
    assert on_disk["ratio_eps4_vs_inf"] == pytest.approx(acc["eps_4"]["sentiment"] / acc["eps_inf"]["sentiment"])
    assert on_disk["ratio_inf_vs_real"] == pytest.approx(acc["eps_inf"]["sentiment"] / acc["real"]["sentiment"])
    assert on_disk["goals"]["inf_vs_real_met"] == (on_disk["ratio_inf_vs_real"] >= 0.90)
    assert on_disk["goals"]["eps4_vs_inf_met"] == (on_disk["ratio_eps4_vs_inf"] >= 0.95)

def test_settings_and_sizes_are_recorded(report: tuple[dict, Path]) -> None:
    result, _ = report
    s = result["settings"]
    for key in ("train_records", "test_records", "model", "finetune", "epochs", "batch_size", "learning_rate",
                "max_tokens", "num_samples", "seeds", "device_used"):
        assert key in s
    assert result["data"]["train_records"] == 48 and result["data"]["test_records"] == 12
    assert result["data"]["overlap_train_test"] == 0
    real = result["scores"]["real"]["labels"]["sentiment"]
    assert real["num_train"] == 48 and real["num_test"] == 12
    syn = result["scores"]["eps_4"]["labels"]["sentiment"]
    assert syn["num_train"] == result["runs"]["eps_4"]["synthetic_rows"] > 0
    assert 0.0 <= syn["label_agreement"] <= 1.0
    assert result["scores"]["eps_4"]["real_same_size"]["sentiment"]["num_train"] == syn["num_train"]

def test_private_run_spends_its_budget_and_the_nonprivate_run_none(report: tuple[dict, Path]) -> None:
    runs = report[0]["runs"]
    assert runs["eps_4"]["epsilon_spent"] <= 4.0 + 1e-6 and runs["eps_4"]["epsilon_spent"] > 3.0
    assert runs["eps_4"]["noise_multiplier"] > 0 and runs["eps_4"]["steps"] >= 1
    assert runs["eps_inf"]["epsilon_spent"] is None and runs["eps_inf"]["noise_multiplier"] is None
    for name in ("eps_inf", "eps_4"):
        t = runs[name]["timings_s"]
        assert t["train_s"] > 0 and t["sample_s"] > 0 and t["wall_s"] >= t["train_s"]
        assert Path(runs[name]["synthetic_path"]).is_file()
    assert report[0]["wall_s"]["total_s"] > 0

def test_an_unreachable_epsilon_is_recorded_not_raised(report: tuple[dict, Path]) -> None:
    result = report[0]
    assert "out of reach" in result["runs"]["eps_1e-06"]["error"]
    assert result["accuracy"]["eps_1e-06"]["sentiment"] is None
    assert "error" in render_table(result)

def test_table_renders(report: tuple[dict, Path]) -> None:
    text = render_table(report[0])
    assert "eps_inf" in text and "eps_4" in text and "ratio ε=4 / ε=∞" in text

def test_lift_and_ratios_known_answers() -> None:
    assert lift(0.8, 0.9, 0.6) == pytest.approx(2 / 3)
    assert lift(0.6, 0.6, 0.6) is None  # a reference at chance level has no gain to keep
    scores = {"real": {"labels": {"sentiment": {"accuracy": 0.8, "macro_f1": 0.7, "majority_accuracy": 0.5}}},
              "eps_inf": {"labels": {"sentiment": {"accuracy": 0.7, "macro_f1": 0.6}}},
              "eps_4": {"labels": {"sentiment": {"accuracy": 0.665, "macro_f1": 0.6}}}}
    s = summarise(scores, (math.inf, 4.0), ["sentiment"])
    assert s["ratio_inf_vs_real"] == pytest.approx(0.875) and s["ratio_eps4_vs_inf"] == pytest.approx(0.95)
    assert s["goals"]["inf_vs_real_met"] is False and s["goals"]["eps4_vs_inf_met"] is True
    assert s["ratios_per_label"]["sentiment"]["lift_eps4_vs_inf"] == pytest.approx(0.165 / 0.2)
    only_real = summarise({"real": scores["real"]}, (), ["sentiment"])
    assert only_real["ratio_eps4_vs_inf"] is None and only_real["goals"]["eps4_vs_inf_met"] is None

def test_cli_flags_override_quick_defaults(tmp_path: Path) -> None:
    import argparse

    ns = argparse.Namespace(quick=True, out=None, out_dir=tmp_path, epsilon=parse_epsilons("inf, 8"), epochs=2.0,
                            train_records=None, max_tokens=16)
    cfg = build_config(ns)
    assert cfg.quick and cfg.train_records == 48 and cfg.epochs == 2.0 and cfg.max_tokens == 16
    assert cfg.epsilons == (math.inf, 8.0) and cfg.runs_dir == tmp_path
    assert [epsilon_tag(e) for e in cfg.epsilons] == ["inf", "8"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_epsilons("0")
    with pytest.raises(SystemExit):
        main(["--finetune", "adapter"])
