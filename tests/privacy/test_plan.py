"""The privacy plan: the schedule from N and the settings, what it declares public, the weak-signal warning, and
independent randomness per mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpsynth.privacy.accounting import DpSgdMechanism
from dpsynth.privacy.plan import PlanRequest, PrivacyPlan, plan_privacy, seeded_stream

REQUEST = PlanRequest(epsilon=4.0, delta=None, num_units=80, unit="record", expected_batch_size=16, epochs=1.0,
                      clip_norm=1.0, max_tokens=32)


def test_a_budget_whose_noise_drowns_the_signal_is_flagged() -> None:
    """σ / (q·N) above 0.1 clip norms per update is flagged; below, or without DP, it is not."""
    def plan(sigma: float | None) -> PrivacyPlan:
        dpsgd = None if sigma is None else DpSgdMechanism(sigma, 0.2, 5)
        return PrivacyPlan(REQUEST, 0.2, 5, None if sigma is None else 1e-3, dpsgd)

    assert plan(0.68).weak_signal_warning() is None  # ε = 4 at batch 16: 0.04 clip norms
    assert plan(1.59).weak_signal_warning() is None and plan(1.61).weak_signal_warning() is not None  # 0.1 is the line
    assert plan(None).weak_signal_warning() is None  # no DP: no noise to flag


def test_schedule_delta_and_declarations() -> None:
    plan = plan_privacy(REQUEST)
    assert plan.sample_rate == pytest.approx(0.2) and plan.steps == 5
    assert plan.delta == pytest.approx(1 / (80 * math.log(80)))
    assert plan.label_histogram is None and plan.private
    assert plan.declarations[0].startswith("The number of records N is treated as public")
    labels = plan_privacy(PlanRequest(**{**REQUEST.__dict__, "has_labels": True}))
    assert labels.label_histogram is not None and labels.label_histogram.threshold_delta > 0  # values from the data
    assert any("read from the data" in d for d in labels.declarations)
    declared = plan_privacy(PlanRequest(**{**REQUEST.__dict__, "has_labels": True, "label_values_declared": True}))
    assert declared.label_histogram.threshold_delta == 0
    public = plan_privacy(PlanRequest(**{**REQUEST.__dict__, "has_labels": True, "label_distribution": "uniform"}))
    assert public.label_histogram is None and any("declared public: uniform" in d for d in public.declarations)
    free = plan_privacy(PlanRequest(**{**REQUEST.__dict__, "epsilon": math.inf}))
    assert not free.private and free.new_ledger().non_private


def test_each_mechanism_draws_its_own_seeded_stream() -> None:
    """Two mechanisms seeded from the same --seed must not share bits (the batches and the label noise)."""
    a = np.random.default_rng(seeded_stream(0, "batches")).random(8)
    b = np.random.default_rng(seeded_stream(0, "label histogram")).random(8)
    again = np.random.default_rng(seeded_stream(0, "batches")).random(8)
    assert not np.allclose(a, b) and np.array_equal(a, again)
