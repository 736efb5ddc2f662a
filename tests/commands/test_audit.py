"""The audit command: defaults, config parsing, the output folder, and two real audits on a tiny model (one
structural with ε ∈ {4, ∞}, one with a known answer: a canary-heavy non-private run memorises it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dpsynth.commands.audit import AuditConfig, clear_audit_outputs, make_audit_config, run_audit
from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.demo import load_demo_dataset
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.audit_scores import rank_in_training_format
from dpsynth.evaluate.canaries import FORMATS, candidate_secrets
from dpsynth.models.loading import load_model
from tests.conftest import sentiment_values


def test_config_parses_cli_strings_and_refuses_mistakes(tmp_path: Path) -> None:
    cfg = make_audit_config(data=tmp_path / "d.csv", out=tmp_path / "o", epsilons="1, 8,inf", formats="phone,email",
                            repetitions="1,10", label_columns="a,b", num_candidates=None)
    assert cfg.epsilons == [1.0, 8.0, math.inf] and cfg.formats == ["phone", "email"]
    assert cfg.repetitions == [1, 10] and cfg.label_columns == ["a", "b"]
    default = AuditConfig(data=tmp_path / "d.csv", out=tmp_path / "o")
    assert default.epsilons == [4.0, math.inf] and default.formats == list(FORMATS)
    assert default.repetitions is None and default.num_candidates is None
    for bad, match in [({"formats": "ssn"}, "unknown canary format"), ({"epsilons": "4,4"}, "listed twice"),
                       ({"epsilons": "0"}, "positive"), ({"repetitions": "0"}, "at least 1"),
                       ({"nonsense": 1}, "unknown option --nonsense.*dpsynth audit --help"),
                       ({"out": None}, "--out is required")]:
        with pytest.raises(DpsynthError, match=match):
            make_audit_config(**({"data": tmp_path / "d.csv", "out": tmp_path / "o"} | bad))
    for name, fld in AuditConfig.model_fields.items():
        assert fld.description, f"{name} needs a description: the CLI help is generated from it"


def test_refuses_a_used_folder_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = AuditConfig(data=tmp_path / "missing.csv", out=out)
    with pytest.raises(DpsynthError, match="--overwrite"):
        run_audit(cfg)
    (out / "eps-4").mkdir()
    (out / "data").mkdir()
    (out / "audit.json").write_text("{}")
    clear_audit_outputs(out)  # --overwrite removes only what an audit writes
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------------ end to end


def _data(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "reviews.csv"
    load_demo_dataset(max_records=n, seed=0).to_csv(path, index=False)
    return path


def test_audit_end_to_end_writes_a_consistent_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _data(tmp_path, 60)
    out = tmp_path / "audit"
    cfg = AuditConfig(data=data, label_columns=["sentiment"], label_values=sentiment_values(tmp_path), out=out,
                      model=str(tiny_model_dir), formats=["phone", "plate"], repetitions=[1, 10], num_candidates=50,
                      epochs=1, batch_size=16, physical_batch_size=16, max_tokens=64, num_samples=8, max_new_tokens=16,
                      holdout_fraction=0.2)
    result = run_audit(cfg)

    report = json.loads((out / "audit.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["config"]["epsilons"] == ["4", "inf"]
    assert report["data"]["records"] == 60 and report["data"]["heldout_records"] == 12
    assert report["data"]["canary_records"] == 2 * (1 + 10)
    train = pd.read_csv(out / "data" / "train_with_canaries.csv")
    assert len(train) == 48 + 22 and (out / "data" / "heldout.csv").is_file()
    for c in report["canaries"]:  # inserted as often as said, with the control codes it is ranked under
        assert (train["text"] == c["text"]).sum() == c["repetitions"]
        assert c["control_codes"]["sentiment"] in {"fresh", "rotten"}
    assert report["settings"]["secrets_ranked"] == 51

    assert [r["epsilon_target"] for r in report["runs"]] == ["4", "inf"]
    dp, nodp = report["runs"]
    assert dp["private"] and 0 < dp["epsilon"] <= 4.0 + 1e-6 and 0 < dp["delta"] < 1
    assert not nodp["private"] and nodp["epsilon"] is None
    ledger = json.loads((out / "eps-4" / "privacy.json").read_text())
    assert ledger["epsilon"] == pytest.approx(dp["epsilon"])
    for run in report["runs"]:
        assert len(run["canaries"]) == 4
        for c in run["canaries"]:
            assert 1 <= c["rank"] <= 51 and (2 * c["rank"]).is_integer()
            assert c["exposure_bits"] == pytest.approx(math.log2(51) - math.log2(c["rank"]))
            assert isinstance(c["verbatim_count"], int) and 0 <= c["verbatim_count"] <= run["synthetic_records"]
        assert set(run["by_repetitions"]) == {"1", "10"}
        assert run["by_repetitions"]["10"]["canaries"] == 2
        mia = run["membership_inference"]
        assert 0.0 <= mia["auc"] <= 1.0 and mia["members"] == mia["nonmembers"] == 12
        assert run["summary"].startswith("At ε = 4" if run["private"] else "Without DP (ε = ∞)")
        assert (out / f"eps-{run['epsilon_target']}" / "synthetic.csv").is_file()

    rows = result.summary_rows()
    assert all(len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)
    assert any(r[0] == "ε = 4: membership-inference AUC" for r in rows)
    assert result.sentences == report["summary"] and len(result.sentences) == 2
    # aggregates and made-up secrets only: no real review appears in the report
    text = (out / "audit.json").read_text()
    real = pd.read_csv(data)["text"]
    assert not any(t in text for t in real if len(t) > 20)


def test_non_private_run_on_canary_heavy_data_memorises_the_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Known answer: the canary is 7 in 8 training records, trained on without DP; the untrained model does not
    rank it first, the trained one does."""
    cfg = AuditConfig(data=_data(tmp_path, 16), label_columns=["sentiment"], out=tmp_path / "audit",
                      label_values=sentiment_values(tmp_path),
                      model=str(tiny_model_dir), finetune="full", epsilons=[math.inf], formats=["phone"],
                      repetitions=[100], num_candidates=50, epochs=3, batch_size=32, physical_batch_size=32,
                      learning_rate=1e-2, max_tokens=64, num_samples=4, max_new_tokens=8)
    result = run_audit(cfg)
    (canary,) = result.report["runs"][0]["canaries"]
    assert canary["rank"] == 1.0
    assert canary["exposure_bits"] == pytest.approx(math.log2(51))
    assert result.report["runs"][0]["by_repetitions"]["100"]["rank_1"] == 1
    assert "1 rank first" in result.sentences[0]

    (info,) = result.report["canaries"]
    base = load_model(tiny_model_dir)
    cands = candidate_secrets("phone", info["secret"], 50, seed=info["seed"], exclude=[info["secret"]])
    ctrl = ControlCodes(["sentiment"]).prefix(info["control_codes"])
    before, _ = rank_in_training_format(base.model, base.tokenizer, ctrl, info["prefix"], info["secret"], cands)
    assert before > 1.0
