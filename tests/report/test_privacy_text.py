"""The privacy ledger in plain words: per record, per user, non-private, missing, and malformed ledgers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpsynth.errors import DpsynthError
from dpsynth.report.privacy_text import describe_privacy, fmt_eps, fmt_factor, fmt_prob, load_ledger

LEDGER = {
    "epsilon": 4.0, "delta": 1.1e-6, "unit": "record", "accountant": "pld", "num_units": 100_000,
    "clip_norm": 1.0,
    "mechanisms": [
        {"name": "dp-sgd", "noise_multiplier": 0.78, "sample_rate": 0.002, "steps": 2500},
        {"name": "gaussian", "noise_multiplier": 12.0, "purpose": "label histogram"},
    ],
}


def test_record_level_statement() -> None:
    s = describe_privacy(LEDGER, noun="review")
    assert s.status == "private" and not s.warnings
    assert "Each review's influence is bounded" in s.headline
    assert "e^4 ≈ 55" in s.headline and "except with probability 1.1e-6" in s.headline
    assert "whether or not any one review was in the training set" in s.headline
    assert s.guarantee == "Guarantee: (ε = 4, δ = 1.1e-6) differential privacy per record, accounted with PLD."
    text = s.as_text()
    assert "DP-SGD for 2500 steps" in text and "probability 0.002" in text and "about 200 per step" in text
    assert "σ = 0.78" in text and "label histogram" in text and "covered by the same guarantee" in text
    assert "below 1/N" in text


def test_user_level_statement() -> None:
    s = describe_privacy(LEDGER | {"unit": "user", "records_per_user_cap": 8})
    assert "Each user's influence" in s.headline
    assert "any one user's records (all of them together) were in the training set" in s.headline
    assert s.guarantee.endswith("per user, accounted with PLD.")
    assert any("at most 8 records per user" in d for d in s.details)
    assert "every user joined the batch" in s.as_text()


@pytest.mark.parametrize("ledger", [
    {"epsilon": math.inf, "delta": None, "unit": "record", "non_private": True, "num_units": 50},
    {"epsilon": "inf", "unit": "record"},
    {"epsilon": None, "non_private": True},
])
def test_non_private_run_is_a_warning(ledger: dict) -> None:
    s = describe_privacy(ledger)
    assert s.status == "non_private"
    assert s.warnings and "WITHOUT differential privacy" in s.warnings[0]
    assert s.guarantee.startswith("Guarantee: none")
    assert s.as_text().startswith("WARNING:")


def test_missing_ledger_is_unknown() -> None:
    s = describe_privacy(None)
    assert s.status == "unknown" and "unknown" in s.headline and s.warnings


def test_weak_parameters_are_called_out() -> None:
    s = describe_privacy(LEDGER | {"epsilon": 30.0, "delta": 0.1, "num_units": 1000, "epsilon_target": 8.0})
    text = s.as_text()
    assert "very weak guarantee" in text
    assert any("not below 1/N" in w for w in s.warnings)
    assert any("exceeds the target" in w for w in s.warnings)
    assert "e^30 ≈ 1.1e+13" in s.headline
    assert "strong guarantee" in describe_privacy(LEDGER | {"epsilon": 0.5}).as_text()


def test_unknown_mechanism_and_notes_are_listed() -> None:
    s = describe_privacy(LEDGER | {"mechanisms": [{"name": "laplace", "scale": 2}], "notes": ["N is public."]})
    assert "Mechanism laplace: scale = 2." in s.details and "N is public." in s.details


def test_formatting_helpers() -> None:
    assert fmt_prob(1.1e-6) == "1.1e-6" and fmt_prob(0.05) == "0.05" and fmt_prob(1e-5) == "1e-5"
    assert fmt_prob(0.00094) == "0.00094"  # a small-N default δ formats without an exponent
    assert fmt_factor(1.0) == "2.72" and fmt_factor(4.0) == "55" and fmt_factor(8.0) == "2,981"
    assert fmt_factor(1000) == "astronomically large"
    # ε is rounded up, never down: the statement must not claim more privacy than was accounted
    assert fmt_eps(2.32472) == "2.33" and fmt_eps(4.0) == "4" and fmt_eps(3.99) == "3.99"
    assert fmt_eps(12.31) == "12.4" and fmt_eps(0.51234) == "0.513"
    assert "(ε = 2.33, δ = 1.1e-6)" in describe_privacy(LEDGER | {"epsilon": 2.32472}).guarantee


def test_load_ledger(tmp_path: Path) -> None:
    assert load_ledger(tmp_path) is None
    (tmp_path / "privacy.json").write_text(json.dumps(LEDGER))
    assert load_ledger(tmp_path) == LEDGER
    assert load_ledger(tmp_path / "privacy.json") == LEDGER
    (tmp_path / "privacy.json").write_text("{not json")
    with pytest.raises(DpsynthError, match="not a readable privacy ledger"):
        load_ledger(tmp_path)


def test_fields_of_the_pipeline_ledger() -> None:
    """Fields written by dpsynth.privacy.ledger: interim writes, neighbouring notion, seeded noise."""
    s = describe_privacy(LEDGER | {"accountant": "PLD (dp-accounting 0.6.0)", "neighbouring": "add/remove one",
                                   "noise_rng": "seeded", "interim": True})
    assert s.guarantee.endswith("accounted with PLD (dp-accounting 0.6.0).")
    assert any("may not have finished" in w for w in s.warnings)
    assert "Neighbouring datasets: add/remove one record" in s.as_text()
    assert "seeded pseudo-random generator" in s.as_text()
    assert not describe_privacy(LEDGER | {"noise_rng": "secure"}).warnings
