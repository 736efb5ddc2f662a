"""privacy.json: round trip, atomic writes, honest non-private runs, and ε recomputable from the file alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from dpsynth.errors import DpsynthError
from dpsynth.privacy.accounting import DpSgdMechanism, GaussianMechanism, compute_epsilon
from dpsynth.privacy.ledger import PrivacyLedger

N = 50_000
DELTA = 1 / (N * math.log(N))
Q = 0.02


def private_ledger() -> PrivacyLedger:
    ledger = PrivacyLedger(DELTA, "record", N, clip_norm=1.0, epsilon_target=3.0, noise_rng="seeded",
                           notes=["N is treated as public."])
    ledger.add(DpSgdMechanism(1.1, Q, 0))
    ledger.set_dpsgd_steps(400)
    ledger.add(GaussianMechanism(12.0, "label histogram"))
    return ledger


def epsilon_from_json_alone(d: dict) -> float:
    """Independent of dpsynth: the documented JSON fields, fed to dp_accounting's event API."""
    events = []
    for m in d["mechanisms"]:
        if m["name"] == "dp-sgd":
            step = dp_accounting.PoissonSampledDpEvent(m["sample_rate"], dp_accounting.GaussianDpEvent(
                m["noise_multiplier"]))
            events.append(dp_accounting.SelfComposedDpEvent(step, m["steps"]))
        elif m["name"] == "gaussian":
            events.append(dp_accounting.GaussianDpEvent(m["noise_multiplier"]))
        else:
            raise AssertionError(m)
    acc = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                        value_discretization_interval=d["pld_value_discretization"])
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(d["delta"])


def test_core_fields_and_epsilon_recomputed_from_the_json_alone(tmp_path: Path) -> None:
    ledger = private_ledger()
    path = ledger.write(tmp_path / "privacy.json")
    d = json.loads(path.read_text())
    assert d["unit"] == "record" and d["delta"] == DELTA and d["non_private"] is False
    assert d["accountant"].startswith("PLD (dp-accounting ")
    assert d["mechanisms"] == [
        {"name": "dp-sgd", "noise_multiplier": 1.1, "sample_rate": Q, "steps": 400},
        {"name": "gaussian", "noise_multiplier": 12.0, "purpose": "label histogram"},
    ]
    assert d["epsilon"] == pytest.approx(epsilon_from_json_alone(d), rel=1e-9)
    assert d["epsilon"] == ledger.epsilon
    assert d["epsilon"] > compute_epsilon([DpSgdMechanism(1.1, Q, 400)], DELTA)  # the histogram is counted


def test_interim_write_is_an_upper_bound_and_reproducible(tmp_path: Path) -> None:
    ledger = private_ledger()
    d = json.loads(ledger.write(tmp_path / "privacy.json", interim=True).read_text())
    assert d["interim"] is True and d["pld_value_discretization"] > 1e-4
    assert d["epsilon"] == pytest.approx(epsilon_from_json_alone(d), rel=1e-9)
    assert ledger.epsilon <= d["epsilon"] <= ledger.epsilon * 1.02


def test_round_trip(tmp_path: Path) -> None:
    ledger = private_ledger()
    ledger.write(tmp_path / "privacy.json")
    back = PrivacyLedger.read(tmp_path / "privacy.json")
    assert back.mechanisms == ledger.mechanisms
    assert back.to_dict() == ledger.to_dict()
    assert back.epsilon == ledger.epsilon


def test_steps_are_updated_in_place_and_never_decrease() -> None:
    ledger = private_ledger()
    eps_400 = ledger.epsilon
    ledger.set_dpsgd_steps(800)
    assert ledger.dpsgd_steps == 800 and ledger.epsilon > eps_400
    with pytest.raises(ValueError):
        ledger.set_dpsgd_steps(10)
    with pytest.raises(ValueError):
        ledger.add(DpSgdMechanism(1.0, Q, 1))
    with pytest.raises(ValueError):
        PrivacyLedger(DELTA, "record", N).set_dpsgd_steps(1)


def test_atomic_write_leaves_the_old_file_and_no_partial_file(tmp_path: Path) -> None:
    ledger = private_ledger()
    path = ledger.write(tmp_path / "privacy.json")
    before = path.read_bytes()
    ledger.set_dpsgd_steps(500)
    ledger.notes.append(object())  # not JSON-serialisable: json.dump fails after writing part of the file
    with pytest.raises(TypeError):
        ledger.write(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["privacy.json"]


def test_non_private_run_says_so_in_valid_json(tmp_path: Path) -> None:
    ledger = PrivacyLedger(None, "record", N, non_private=True)
    assert ledger.epsilon == math.inf and ledger.non_private
    text = ledger.write(tmp_path / "privacy.json").read_text()
    d = json.loads(text)  # strict JSON: no Infinity / NaN tokens
    assert "Infinity" not in text and d["epsilon"] is None and d["non_private"] is True and d["delta"] is None
    back = PrivacyLedger.read(tmp_path / "privacy.json")
    assert back.non_private and back.epsilon == math.inf


def test_a_noiseless_mechanism_makes_the_run_non_private(tmp_path: Path) -> None:
    ledger = private_ledger()
    ledger.add(GaussianMechanism(0.0, "exact label counts"))
    d = json.loads(ledger.write(tmp_path / "privacy.json").read_text())
    assert d["epsilon"] is None and d["non_private"] is True


def test_bad_input_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(DpsynthError):
        PrivacyLedger(DELTA, "household", N)
    with pytest.raises(DpsynthError):
        PrivacyLedger(None, "record", N)
    with pytest.raises(DpsynthError, match="no privacy ledger"):
        PrivacyLedger.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DpsynthError, match="not valid JSON"):
        PrivacyLedger.read(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"delta": DELTA, "mechanisms": [{"name": "laplace"}]}))
    with pytest.raises(DpsynthError):
        PrivacyLedger.read(tmp_path / "odd.json")
