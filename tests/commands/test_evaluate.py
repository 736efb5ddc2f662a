"""`evaluate_synthetic` end to end on real review snippets: files, metrics, warnings, and no training text leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dpsynth.commands.evaluate import EvaluateConfig, evaluate_synthetic, make_config
from dpsynth.errors import DpsynthError
from dpsynth.evaluate.tables import load_text_table, read_frame

LEDGER = {"epsilon": 4.0, "delta": 1e-6, "unit": "record", "accountant": "pld", "num_units": 400,
          "mechanisms": [{"name": "dp-sgd", "noise_multiplier": 0.9, "sample_rate": 0.05, "steps": 300}]}
EVIL = "<script>alert(1)</script> a film & a <b>bold</b> claim"


@pytest.fixture()
def files(tmp_path: Path, reviews: pd.DataFrame) -> dict[str, Path]:
    df = reviews.drop_duplicates("text").reset_index(drop=True)
    real, syn, train = df.iloc[:200].copy(), df.iloc[200:400].copy(), df.iloc[400:800].copy()
    # plant a copy: a synthetic record with 10 consecutive words of a (long) training record
    long_train = train[train["text"].str.split().str.len() >= 14].iloc[0]["text"]
    syn.iloc[0, 0] = "So " + " ".join(long_train.split()[2:12]) + " indeed."
    syn.iloc[1, 0] = EVIL
    run = tmp_path / "run"
    run.mkdir()
    (run / "privacy.json").write_text(json.dumps(LEDGER))
    paths = {"real": tmp_path / "real.csv", "synthetic": tmp_path / "syn.jsonl", "train": tmp_path / "train.parquet",
             "run": run, "out": tmp_path / "report"}
    real.to_csv(paths["real"], index=False)
    syn.to_json(paths["synthetic"], orient="records", lines=True)
    train.to_parquet(paths["train"])
    return paths


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_end_to_end_without_embeddings(files: dict[str, Path]) -> None:
    cfg = make_config(real=files["real"], synthetic=files["synthetic"], train=files["train"], run=files["run"],
                      out=files["out"], label_columns="sentiment", embeddings=False, show_progress=False,
                      record_noun="review")
    result = evaluate_synthetic(cfg)
    assert result.metrics_path == files["out"] / "metrics.json" and result.report_path.is_file()
    metrics = _strict_json(result.metrics_path)
    assert metrics["privacy"]["status"] == "private" and metrics["privacy"]["epsilon"] == 4.0
    util = metrics["utility"][0]
    assert util["label_column"] == "sentiment" and util["real"]["num_train"] == 400
    assert util["synthetic"]["num_test"] == 200
    assert metrics["fidelity"] is None and metrics["leakage"]["nearest_neighbour"] is None
    copy = metrics["leakage"]["copying"]
    assert copy["synthetic_indices"] == [0] and copy["num_with_copy"] == 1
    assert any("possible verbatim copying" in w for w in result.warnings)
    assert set(metrics["timings_s"]) >= {"read", "utility", "text_statistics", "copying", "report"}

    page = result.report_path.read_text(encoding="utf-8")
    assert "Each review&#x27;s influence is bounded" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page or all(e["row"] != 1 for e in metrics["examples"])
    assert "<script" not in page
    # no training record and not the copying synthetic record appear in the report or the metrics
    syn_texts = load_text_table(files["synthetic"], "s", "text", []).texts
    train_texts = load_text_table(files["train"], "t", "text", []).texts
    metrics_text = result.metrics_path.read_text(encoding="utf-8")
    for text in train_texts:
        assert text not in page and json.dumps(text)[1:-1] not in metrics_text
    assert syn_texts[0] not in page and all(e["row"] != 0 for e in metrics["examples"])

    rows = result.summary_rows()
    assert rows[0][0] == "Privacy" and rows[0][1].startswith("ε = 4")
    assert any(r[0] == "Copied 8-word runs from training" and r[1].startswith("1 of 200") for r in rows)


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(files: dict[str, Path]) -> None:
    cfg = make_config(real=files["real"], synthetic=files["synthetic"], out=files["out"], embeddings=False,
                      show_progress=False)
    first = evaluate_synthetic(cfg)
    created = first.metrics_path.read_text(encoding="utf-8")
    with pytest.raises(DpsynthError, match="already holds an evaluation .*--overwrite"):
        evaluate_synthetic(cfg)
    assert first.metrics_path.read_text(encoding="utf-8") == created  # refused before writing anything
    again = evaluate_synthetic(cfg.model_copy(update={"overwrite": True}))
    assert again.metrics_path.is_file() and again.report_path.is_file()


def test_synthetic_defaults_to_run_folder(files: dict[str, Path]) -> None:
    frame = read_frame(files["synthetic"])
    frame.to_csv(files["run"] / "synthetic.csv", index=False)
    cfg = make_config(real=files["real"], run=files["run"], out=files["out"], embeddings=False,
                      show_progress=False)
    result = evaluate_synthetic(cfg)
    assert result.metrics["inputs"]["synthetic"]["path"].endswith("synthetic.csv")
    assert result.metrics["utility"] == [] and result.metrics["leakage"]["copying"] is None
    assert "guarantee" in result.metrics["privacy"]


def test_unknown_privacy_without_run(files: dict[str, Path]) -> None:
    cfg = make_config(real=files["real"], synthetic=files["synthetic"], out=files["out"], embeddings=False,
                      show_progress=False)
    result = evaluate_synthetic(cfg)
    assert result.metrics["privacy"]["status"] == "unknown"
    assert "guarantee of this synthetic data is unknown" in result.report_path.read_text(encoding="utf-8")


def test_user_errors_are_one_sentence(files: dict[str, Path]) -> None:
    with pytest.raises(DpsynthError, match="no column 'stars'"):
        evaluate_synthetic(make_config(real=files["real"], synthetic=files["synthetic"], out=files["out"],
                                       label_columns=["stars"], embeddings=False, show_progress=False))
    with pytest.raises(DpsynthError, match="--synthetic"):
        make_config(real=files["real"], out=files["out"])
    with pytest.raises(DpsynthError, match="holds no synthetic.csv"):
        evaluate_synthetic(make_config(real=files["real"], run=files["run"], out=files["out"], embeddings=False))
    with pytest.raises(DpsynthError, match="--out is required"):
        make_config(real=files["real"], synthetic=files["synthetic"])
    with pytest.raises(DpsynthError, match="needs --train"):
        evaluate_synthetic(make_config(real=files["real"], synthetic=files["synthetic"], out=files["out"],
                                       mia_model="somewhere", embeddings=False, show_progress=False))
    odd = files["real"].with_suffix(".txt")
    odd.write_text("text\nx\n")
    with pytest.raises(DpsynthError, match="format of real.txt"):
        read_frame(odd)


def test_tables_clean_text_and_labels(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["a", "", None, "b"], "stars": [5.0, 4.0, 3.0, 1.0]}).to_parquet(tmp_path / "x.parquet")
    pd.DataFrame({"text": ["a", "b"], "stars": ["5", "1"]}).to_csv(tmp_path / "y.csv", index=False)
    x = load_text_table(tmp_path / "x.parquet", "real", "text", ["stars"])
    y = load_text_table(tmp_path / "y.csv", "synthetic", "text", ["stars"])
    assert x.texts == ["a", "b"] and x.dropped_empty == 2
    assert x.labels["stars"] == y.labels["stars"] == ["5", "1"]  # 5.0 from Parquet equals "5" from CSV
    assert len(x.subsample(1, seed=0)) == 1 and x.subsample(None, seed=0) is x


def test_config_accepts_comma_separated_labels() -> None:
    cfg = EvaluateConfig(real="r.csv", synthetic="s.csv", out="o", label_columns="a, b")
    assert cfg.label_columns == ["a", "b"] and cfg.classifier == "tfidf" and cfg.k == 3


def test_columns_default_to_the_runs(files: dict[str, Path]) -> None:
    run = files["run"]
    assert make_config(real=files["real"], run=run, out=files["out"]).label_columns == []  # no run.json: defaults
    (run / "run.json").write_text(json.dumps({"config": {"text_column": "review", "label_columns": ["stars"]}}))
    cfg = make_config(real=files["real"], run=run, out=files["out"])
    assert (cfg.text_column, cfg.label_columns) == ("review", ["stars"])
    cfg = make_config(real=files["real"], run=run, out=files["out"], text_column="text", label_columns="sentiment")
    assert (cfg.text_column, cfg.label_columns) == ("text", ["sentiment"])  # given ones win


def test_membership_inference_with_a_tiny_model(files: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import char_tokenizer, tiny_causal_lm

    tok = char_tokenizer()
    folder = tmp_path / "lm"
    tiny_causal_lm(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = make_config(real=files["real"], synthetic=files["synthetic"], train=files["train"], out=files["out"],
                      embeddings=False, show_progress=False, mia_model=str(folder), mia_max_records=40, device="cpu")
    mia = evaluate_synthetic(cfg).metrics["leakage"]["membership_inference"]
    assert mia["num_members"] == 40 and mia["num_nonmembers"] == 40
    assert 0.25 < mia["auc"] < 0.75  # an untrained model cannot tell members apart


@pytest.mark.real_model
def test_end_to_end_with_minilm(files: dict[str, Path]) -> None:
    cfg = make_config(real=files["real"], synthetic=files["synthetic"], train=files["train"], run=files["run"],
                      out=files["out"], label_columns="sentiment", show_progress=False, device="cpu",
                      max_fidelity_records=120)
    result = evaluate_synthetic(cfg)
    fid = result.metrics["fidelity"]
    assert fid["num_real"] == 120 and fid["num_synthetic"] == 120
    assert fid["f1"] > 0.5 and fid["mauve"] > 0.5  # two halves of the same review corpus
    near = result.metrics["leakage"]["nearest_neighbour"]
    assert 0.3 < near["closer_to_train"] < 0.7  # no memorisation: the "synthetic" half never saw training
    page = result.report_path.read_text(encoding="utf-8")
    assert 'alt="PCA of embeddings"' in page
    assert any(r[0] == "MAUVE" for r in result.summary_rows())
