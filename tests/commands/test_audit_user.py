"""`dpsynth audit --user-column`: each canary is one new user, the per-user cap limits the copies training sees
(and the audit says how many), held-out non-members are whole users, and membership inference attacks users."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from dpsynth.commands import audit as audit_command
from dpsynth.commands.audit import AuditConfig, make_audit_config, print_audit_summary, run_audit
from dpsynth.data.demo import load_demo_dataset
from dpsynth.errors import DpsynthError
from dpsynth.evaluate import audit_data, audit_users
from dpsynth.evaluate.canaries import make_canaries
from tests.conftest import sentiment_values


def _user_data(path: Path, n: int = 72) -> Path:
    """Demo reviews with a `user` column: 18 users of 4 records, except u0 who wrote 12 (the cap will bite)."""
    df = load_demo_dataset(max_records=n, seed=0)
    df["user"] = ["u0"] * 12 + [f"u{1 + i // 4}" for i in range(n - 12)]
    df.to_csv(path, index=False)
    return path


def test_canary_users_are_fresh_and_whole_users_are_held_out() -> None:
    cans = make_canaries(["phone", "email"], [1, 100], seed=0)
    ids = audit_users.canary_user_ids(cans, ["u1", "canary-phone-x1-0", " canary-email-x100-0 "])
    assert ids["phone-x1-0"] == "canary-phone-x1-0-2" and ids["email-x100-0"] == "canary-email-x100-0-2"
    assert len(set(ids.values())) == 4

    table = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "user": [f"u{i % 7}" for i in range(30)]})
    train, held = audit_users.split_users(table, "user", 2, seed=3)
    assert held["user"].nunique() == 2 and not set(held["user"]) & set(train["user"])
    assert len(train) + len(held) == 30
    again = audit_users.split_users(table, "user", 2, seed=3)
    assert again[1].equals(held)

    assert audit_data.auto_repetitions(2_000, 5, cap=8) == [1, 10, 100]  # 5 × (1 + 8 + 8) = 85 trained copies ≤ 5 %
    assert audit_data.auto_repetitions(2_000, 5) == [1, 10]


def test_user_column_config(tmp_path: Path) -> None:
    cfg = make_audit_config(data=tmp_path / "d.csv", out=tmp_path / "o", user_column="user", max_records_per_user=3)
    rcfg = audit_command._run_config(cfg, tmp_path / "t.csv", tmp_path / "r", 4.0)
    assert rcfg.user_column == "user" and rcfg.max_records_per_user == 3
    with pytest.raises(DpsynthError, match="user column must differ"):
        make_audit_config(data=tmp_path / "d.csv", out=tmp_path / "o", user_column="text")


def test_user_level_audit_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _user_data(tmp_path / "reviews.csv")
    out = tmp_path / "audit"
    cap = 4
    cfg = AuditConfig(data=data, label_columns=["sentiment"], user_column="user", max_records_per_user=cap, out=out,
                      label_values=sentiment_values(tmp_path),
                      model=str(tiny_model_dir), formats=["phone", "plate"], repetitions=[1, 10], num_candidates=30,
                      epochs=1, batch_size=8, physical_batch_size=16, max_tokens=64, num_samples=4,
                      max_new_tokens=8, holdout_fraction=0.25, epsilons=[math.inf], show_progress=False)
    result = run_audit(cfg, console=Console(file=io.StringIO()))
    report = json.loads((out / "audit.json").read_text())

    # every copy of a canary belongs to one new user; training keeps at most `cap` of them
    train = pd.read_csv(out / "data" / "train_with_canaries.csv", dtype=str)
    held = pd.read_csv(out / "data" / "heldout.csv", dtype=str)
    real_users = set(pd.read_csv(data, dtype=str)["user"])
    for c in report["canaries"]:
        copies = train[train["text"] == c["text"]]
        assert len(copies) == c["repetitions"] and set(copies["user"]) == {c["user_id"]}
        assert c["user_id"] not in real_users
        assert c["copies_trained"] == min(c["repetitions"], cap)
    assert not set(held["user"]) & set(train["user"]), "non-members are whole users"
    d = report["data"]
    assert d["privacy_unit"] == "user" and d["heldout_users"] == round(16 * 0.25) and d["canary_users"] == 4
    assert d["canary_records_trained"] == 2 * (1 + cap)

    # the run really trained on what the audit says: users (with the canary users) and records after the cap
    run_data = json.loads((out / "eps-inf" / "data_report.json").read_text())
    assert run_data["num_users"] == d["training_users"] + 4
    assert run_data["records_dropped_by_cap"] == d["records_dropped_by_cap"] + 2 * (10 - cap)
    assert run_data["records_per_user_cap"] == cap
    assert "u0" in set(train["user"]) and d["records_dropped_by_cap"] == 12 - cap  # (seed 0 trains on u0)

    (run,) = report["runs"]
    assert all(row["copies_trained"] == min(row["repetitions"], cap) for row in run["canaries"])
    assert run["by_repetitions"]["10"]["copies_trained"] == cap
    mia = run["membership_inference"]
    assert mia["unit"] == "user" and mia["members"] == mia["nonmembers"] == d["heldout_users"]
    assert mia["nonmember_records"] <= cap * mia["nonmembers"]
    assert 0.0 <= mia["auc"] <= 1.0

    # the output says so
    assert any(f"--max-records-per-user {cap}" in n and "×10: 4" in n for n in result.notes)
    assert any("user-level" in n for n in result.notes)
    assert "canary users with 10 repetitions (4 copies trained)" in result.sentences[0]
    assert "user-level membership-inference AUC" in result.sentences[0]
    rows = dict((r[0], r[1]) for r in result.summary_rows())
    assert "ε = ∞: canaries ×10 (4 trained) ranked first / verbatim" in rows
    assert rows["ε = ∞: user-level membership-inference AUC"].endswith(" users)")
    shown = Console(file=io.StringIO(), width=200)
    print_audit_summary(result, console=shown)
    assert "note:" in shown.file.getvalue()
