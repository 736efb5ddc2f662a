"""The accountant against published check values and two independent accountants (Opacus RDP, Microsoft PRV).

The paper's check values (N = 1.9M, B = 4096, ε = 4, δ = 1/(N ln N)): σ ≈ 0.78 for 50 epochs, ≈ 0.70 for 20.
RDP is a looser upper bound, so it must never come out below ours; PRV is a tight numerical accountant with its
own error bounds, so ours must fall within them (up to the PLD grid's pessimism, ≈1e-3 in ε here).
"""

from __future__ import annotations

import math
import warnings

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from dpsynth.errors import DpsynthError
from dpsynth.privacy.accounting import (
    BASE_INTERVAL,
    BudgetPlan,
    DpSgdMechanism,
    EpsilonTracker,
    GaussianMechanism,
    calibrate_noise_multiplier,
    compute_epsilon,
    compute_epsilon_with_interval,
    default_delta,
    gaussian_noise_for_epsilon,
    mechanism_from_dict,
    plan_budget,
    threshold_failure_probability,
)

YELP_N = 1_900_000
YELP_Q = 4096 / YELP_N
YELP_DELTA = 1 / (YELP_N * math.log(YELP_N))

# A smaller set-up for the cross-checks (keeps each independent accountant to about a second).
N = 100_000
Q = 0.01
T = 1000
DELTA = 1 / (N * math.log(N))


def independent_epsilon(sigma: float, q: float, steps: int, delta: float, gaussians: tuple[float, ...] = (),
                        interval: float = BASE_INTERVAL) -> float:
    """dp_accounting used directly, through its event API, without any dpsynth code."""
    events = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)]
    events += [dp_accounting.GaussianDpEvent(s) for s in gaussians]
    acc = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=interval)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(delta)


def opacus_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants.analysis import rdp

    orders = [1 + x / 20 for x in range(1, 200)] + list(range(11, 128)) + [160, 256, 512]
    r = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = rdp.get_privacy_spent(orders=orders, rdp=r, delta=delta)
    return float(eps)


def prv_epsilon(sigma: float, q: float, steps: int, delta: float, gaussian: float | None = None,
                eps_error: float = 0.01) -> tuple[float, float, float]:
    from prv_accountant import GaussianMechanism as PrvGaussian
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    prvs = [PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)]
    counts = [steps]
    if gaussian is not None:
        prvs.append(PrvGaussian(noise_multiplier=gaussian))
        counts.append(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = PRVAccountant(prvs=prvs, max_self_compositions=counts, eps_error=eps_error, delta_error=delta / 1000)
        lo, est, up = acc.compute_epsilon(delta=delta, num_self_compositions=counts)
    return lo, est, up


def test_default_delta_is_one_over_n_ln_n() -> None:
    assert default_delta(1000) == pytest.approx(1 / (1000 * math.log(1000)))
    assert default_delta(YELP_N) < 1 / YELP_N
    with pytest.raises(DpsynthError):
        default_delta(1)


def test_yelp_check_values_50_and_20_epochs() -> None:
    """σ ≈ 0.78 (50 epochs) and ≈ 0.70 (20 epochs) at ε = 4; the returned σ is feasible and (nearly) smallest."""
    for epochs, expected in [(50, 0.78), (20, 0.70)]:
        steps = round(epochs / YELP_Q)
        sigma = calibrate_noise_multiplier(4.0, YELP_DELTA, YELP_Q, steps)
        assert sigma == pytest.approx(expected, rel=0.03), (epochs, sigma)
        eps = compute_epsilon([DpSgdMechanism(sigma, YELP_Q, steps)], YELP_DELTA)
        assert 4.0 * 0.995 < eps <= 4.0
        assert compute_epsilon([DpSgdMechanism(sigma * 0.998, YELP_Q, steps)], YELP_DELTA) > 4.0
        if epochs == 50:
            # The second independent accountant at the check value: RDP is looser, but not wildly.
            rdp = opacus_rdp_epsilon(sigma, YELP_Q, steps, YELP_DELTA)
            assert eps <= rdp <= 1.4 * eps


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, Q, T), (0.8, 0.004, 3000), (2.0, 0.05, 200)])
def test_rdp_is_an_upper_bound_on_ours(sigma: float, q: float, steps: int) -> None:
    ours = compute_epsilon([DpSgdMechanism(sigma, q, steps)], DELTA)
    rdp = opacus_rdp_epsilon(sigma, q, steps, DELTA)
    assert ours <= rdp
    assert ours > 0.5 * rdp  # same ballpark: a units mix-up (q vs batch, σ vs std) would break this


def test_prv_accountant_agrees_on_dpsgd_and_on_composition_with_a_gaussian() -> None:
    sigma, sigma_h = 0.9, 8.0
    ours = compute_epsilon([DpSgdMechanism(sigma, Q, T)], DELTA)
    lo, est, up = prv_epsilon(sigma, Q, T, DELTA)
    tol = 5e-3  # our PLD grid is pessimistic by about this much in ε
    assert lo - tol <= ours <= up + tol
    assert ours == pytest.approx(est, abs=0.02)

    ours_c = compute_epsilon([DpSgdMechanism(sigma, Q, T), GaussianMechanism(sigma_h, "label histogram")], DELTA)
    lo_c, est_c, up_c = prv_epsilon(sigma, Q, T, DELTA, gaussian=sigma_h)
    assert lo_c - tol <= ours_c <= up_c + tol
    assert ours_c > ours + 0.05


def test_composition_matches_dp_accounting_used_directly() -> None:
    sigma, sigma_h = 0.9, 8.0
    alone = compute_epsilon([DpSgdMechanism(sigma, Q, T)], DELTA)
    both = compute_epsilon([GaussianMechanism(sigma_h, "label histogram"), DpSgdMechanism(sigma, Q, T)], DELTA)
    assert both > alone
    assert alone == pytest.approx(independent_epsilon(sigma, Q, T, DELTA), rel=1e-6)
    assert both == pytest.approx(independent_epsilon(sigma, Q, T, DELTA, (sigma_h,)), rel=1e-6)
    # Two Gaussians compose like one with σ/√2 (exact for Gaussians): a check of the composition itself.
    two = compute_epsilon([GaussianMechanism(5.0, "a"), GaussianMechanism(5.0, "b")], DELTA)
    one = compute_epsilon([GaussianMechanism(5.0 / math.sqrt(2), "ab")], DELTA)
    assert two == pytest.approx(one, rel=2e-3)


def test_small_epsilon_uses_a_finer_grid_and_stays_reproducible() -> None:
    mechs = [DpSgdMechanism(20.0, Q, T)]
    eps, interval = compute_epsilon_with_interval(mechs, DELTA)
    coarse = compute_epsilon(mechs, DELTA, value_discretization_interval=BASE_INTERVAL)
    assert interval < BASE_INTERVAL and eps < coarse
    assert eps == pytest.approx(independent_epsilon(20.0, Q, T, DELTA, interval=interval), rel=1e-6)
    assert eps >= prv_epsilon(20.0, Q, T, DELTA, eps_error=1e-3)[0] - 1e-3


def test_degenerate_mechanisms() -> None:
    assert compute_epsilon([], DELTA) == 0.0
    assert compute_epsilon([DpSgdMechanism(1.0, Q, 0)], DELTA) == 0.0
    assert compute_epsilon([DpSgdMechanism(0.0, Q, 10)], DELTA) == math.inf
    assert compute_epsilon([DpSgdMechanism(1.0, Q, 10), GaussianMechanism(0.0, "exact counts")], DELTA) == math.inf
    with pytest.raises(DpsynthError):
        DpSgdMechanism(-1.0, Q, 10)
    with pytest.raises(DpsynthError):
        DpSgdMechanism(1.0, 1.5, 10)


def test_mechanism_dicts_round_trip() -> None:
    for m in [DpSgdMechanism(0.77, 0.002, 23193), GaussianMechanism(22.4, "label histogram")]:
        d = m.to_dict()
        assert mechanism_from_dict(d) == m == type(m).from_dict(d)
    assert DpSgdMechanism(0.77, 0.002, 5).to_dict() == {"name": "dp-sgd", "noise_multiplier": 0.77,
                                                        "sample_rate": 0.002, "steps": 5}
    with pytest.raises(DpsynthError):
        mechanism_from_dict({"name": "laplace", "noise_multiplier": 1.0})


def test_gaussian_noise_for_epsilon_costs_that_epsilon() -> None:
    for eps in [0.2, 1.0, 4.0]:
        sigma = gaussian_noise_for_epsilon(eps, DELTA)
        got = compute_epsilon([GaussianMechanism(sigma, "h")], DELTA)
        assert got == pytest.approx(eps, rel=2e-3)
    assert gaussian_noise_for_epsilon(0.2, DELTA) > gaussian_noise_for_epsilon(1.0, DELTA)


def test_plan_budget_composes_histogram_and_dpsgd_to_the_target() -> None:
    plain = plan_budget(2.0, DELTA, N, Q, T)
    assert isinstance(plain, BudgetPlan) and plain.label_histogram is None
    plan = plan_budget(2.0, DELTA, N, Q, T, label_fraction=0.1)
    assert plan.label_histogram is not None
    assert plan.label_histogram.noise_multiplier == pytest.approx(gaussian_noise_for_epsilon(0.2, DELTA))
    assert plan.dpsgd.noise_multiplier > plain.dpsgd.noise_multiplier  # the histogram's share costs training noise
    assert plan.dpsgd.steps == T and plan.dpsgd.sample_rate == Q
    # One honest number: the joint composition, recomputed independently.
    joint = independent_epsilon(plan.dpsgd.noise_multiplier, Q, T, DELTA, (plan.label_histogram.noise_multiplier,))
    assert plan.epsilon == pytest.approx(joint, rel=1e-6)
    assert 2.0 * 0.99 < plan.epsilon <= 2.0


def test_thresholded_histogram_spends_its_delta_outside_the_pld() -> None:
    """Label values read from the data: the histogram is thresholded and THRESHOLD_DELTA_SHARE of δ pays for it.
    The run's ε must be the PLD of both mechanisms at δ − threshold_delta (recomputed without dpsynth code), and
    the threshold's failure probability p must satisfy e^ε·p/(1 − p) = threshold_delta."""
    plan = plan_budget(2.0, DELTA, N, Q, T, label_fraction=0.1, label_threshold=True)
    hist = plan.label_histogram
    assert hist is not None and hist.threshold_delta == pytest.approx(0.1 * DELTA)
    joint = independent_epsilon(plan.dpsgd.noise_multiplier, Q, T, DELTA - hist.threshold_delta,
                                (hist.noise_multiplier,))
    assert plan.epsilon == pytest.approx(joint, rel=1e-6) and 2.0 * 0.99 < plan.epsilon <= 2.0
    untouched = plan_budget(2.0, DELTA, N, Q, T, label_fraction=0.1)
    assert plan.dpsgd.noise_multiplier > untouched.dpsgd.noise_multiplier  # less δ for the PLD: more noise
    p = threshold_failure_probability(hist.threshold_delta, 2.0)
    assert math.exp(2.0) * p / (1 - p) == pytest.approx(hist.threshold_delta, rel=1e-9)
    # the ledger entry carries the share, so another library can recompute the total
    d = hist.to_dict()
    assert d["threshold_delta"] == hist.threshold_delta and mechanism_from_dict(d) == hist
    assert "threshold_delta" not in untouched.label_histogram.to_dict()
    tracker = EpsilonTracker([hist], plan.dpsgd.noise_multiplier, Q, DELTA)
    assert tracker.epsilon(T) == pytest.approx(plan.epsilon, rel=1e-6)
    with pytest.raises(DpsynthError):
        compute_epsilon([GaussianMechanism(5.0, "h", threshold_delta=DELTA)], DELTA)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"target_epsilon": 0.0}, "positive"),
    ({"target_epsilon": -1.0}, "positive"),
    ({"target_epsilon": math.inf}, "no differential privacy"),
    ({"delta": 2 / N}, "1/N"),
    ({"delta": 0.0}, "δ"),
    ({"sample_rate": 0.0}, "sampling rate"),
    ({"sample_rate": 1.5}, "sampling rate"),
    ({"steps": 0}, "at least one step"),
    ({"target_epsilon": 1e-3}, "out of reach"),
    ({"label_fraction": 1.0}, "share of ε"),
    ({"num_units": 1}, "at least 3"),
    ({"num_units": 2}, "at least 3"),  # 1/(N ln N) ≥ 1/N: the default δ itself would be refused
])
def test_infeasible_requests_raise_one_sentence(kwargs: dict, fragment: str) -> None:
    args = {"target_epsilon": 2.0, "delta": DELTA, "num_units": N, "sample_rate": Q, "steps": T} | kwargs
    with pytest.raises(DpsynthError, match=fragment) as info:
        plan_budget(**args)
    assert "\n" not in str(info.value)


def test_budget_already_spent_by_other_mechanisms() -> None:
    with pytest.raises(DpsynthError, match="already spend"):
        calibrate_noise_multiplier(1.0, DELTA, Q, T, [GaussianMechanism(0.5, "h")])


def test_epsilon_tracker_is_monotone_and_matches_compute_epsilon() -> None:
    hist = GaussianMechanism(10.0, "label histogram")
    tracker = EpsilonTracker([hist], 0.9, Q, DELTA)
    steps = [0, 1, 10, 100, 500, T]
    values = [tracker.epsilon(s) for s in steps]
    assert values == sorted(values) and values[0] > 0  # the histogram is spent before step 0
    for s, v in zip(steps, values):
        ref = compute_epsilon([DpSgdMechanism(0.9, Q, s), hist], DELTA, value_discretization_interval=BASE_INTERVAL)
        assert v == pytest.approx(ref, rel=1e-9)
    assert tracker.epsilon(T) == compute_epsilon([DpSgdMechanism(0.9, Q, T), hist], DELTA)  # ε ≥ 0.4: same grid
    assert EpsilonTracker([], 0.0, Q, DELTA).epsilon(3) == math.inf
    assert EpsilonTracker([], 0.9, Q, DELTA).epsilon(0) == 0.0
