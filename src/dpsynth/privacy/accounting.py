"""(ε, δ) accounting for a run: a tight privacy-loss-distribution (PLD) accountant from `dp_accounting`.

What is accounted
-----------------
- Neighbouring relation: add-or-remove one privacy unit (a record, or a user when clipping per user).
- DP-SGD: `steps` self-compositions of a Poisson-subsampled Gaussian (each unit is in each step independently
  with probability q; noise std = σ × clip norm). The sampler in `sampling.py` realises exactly this assumption.
- Other releases (e.g. the label histogram): plain Gaussian mechanisms, σ = noise std / L2 sensitivity.
All mechanisms of a run are composed in *one* PLD, so the reported ε is one honest number for the whole run;
nothing is added up loosely.
- One exception to "δ is not split": a Gaussian release over cells read from the data (the label histogram when
  the label values are not declared) publishes only cells whose noisy count clears a threshold, so a cell only
  the differing unit holds is published with a small probability p. That costs `threshold_delta` =
  e^ε_target · p / (1 − p) of δ outside the PLD (see `threshold_failure_probability`); the PLD is read at
  δ − Σ threshold_delta, and the ledger records each mechanism's share so the total can be recomputed.

PLD discretisation
------------------
dp_accounting rounds privacy losses onto a grid of width `value_discretization_interval`, pessimistically: every
value it returns is an upper bound on the true ε, and a finer grid is tighter but slower (cost ∝ 1/interval).
- Reported ε (`compute_epsilon`, the ledger): grid 1e-4 (dp_accounting's default). Its pessimism is absolute
  (≈1e-3 in ε at Yelp scale), so for small ε (< 0.4) the grid is refined to 1e-4/2^k, k ≤ 4, keeping the error
  well under 1%, and the smaller of the two upper bounds is reported with the grid that produced it (the ledger
  records it, so anyone can recompute the number exactly).
- Calibration: dp-accounting's (Brent's method) on a 10× coarser grid (cheap, and an upper bound, so its answer
  is feasible), then on the reported grid inside a 2 % bracket below it; the returned σ is feasible under the
  reported rule and within 0.1 % of the smallest feasible σ.
- EpsilonTracker (progress bar): the same composition on a fixed grid (1e-4 by default); identical to the
  reported ε from ε ≥ 0.4 on, a slightly pessimistic upper bound below.
Every ε comes from one function, `_epsilon_at`: dp-accounting's PLD accountant over the run's composed event.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from dp_accounting import dp_event, get_sigma_gaussian
from dp_accounting import mechanism_calibration as mc
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation

from dpsynth.errors import DpsynthError

NEIGHBOURING = NeighboringRelation.ADD_OR_REMOVE_ONE
BASE_INTERVAL = 1e-4  # PLD grid for reported ε (dp_accounting's default)
REFINE_BELOW_EPSILON = 0.4  # below this ε the grid is refined: the grid's pessimism is absolute, not relative
MAX_REFINE_LEVELS = 4  # finest grid 1e-4 / 16
SEARCH_COARSENING = 10.0  # calibration first searches on a grid this much coarser
MAX_NOISE_MULTIPLIER = 50.0  # beyond this, training is pure noise: refuse rather than plan a useless run
MIN_NOISE_MULTIPLIER = 0.1  # the calibration never goes below (essentially no privacy there anyway)
CALIBRATION_RTOL = 1e-3
THRESHOLD_DELTA_SHARE = 0.1  # share of δ for publishing only label combinations whose noisy count clears a threshold


def default_delta(n: int) -> float:
    """δ = 1/(N ln N), the paper's choice: below 1/N, so that releasing one whole record is not 'allowed'."""
    if n < 3:  # 1/(N ln N) < 1/N needs ln N > 1
        raise DpsynthError(f"DP training needs at least 3 privacy units (records or users), got N = {n}")
    return 1.0 / (n * math.log(n))


# ----------------------------------------------------------------------------------------------- mechanisms


@dataclass(frozen=True)
class DpSgdMechanism:
    """`steps` noisy updates, each over a Poisson sample of rate q, noise std = noise_multiplier × clip norm."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    name = "dp-sgd"

    def __post_init__(self) -> None:
        _check_sigma(self.noise_multiplier)
        if not 0.0 <= self.sample_rate <= 1.0:
            raise DpsynthError(f"the sampling rate must be in [0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 0:
            raise DpsynthError(f"the number of DP-SGD steps must be a whole number ≥ 0, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "noise_multiplier": float(self.noise_multiplier),
                "sample_rate": float(self.sample_rate), "steps": int(self.steps)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DpSgdMechanism:
        _expect_name(d, cls.name)
        return cls(float(d["noise_multiplier"]), float(d["sample_rate"]), int(d["steps"]))


@dataclass(frozen=True)
class GaussianMechanism:
    """One Gaussian release (e.g. the label histogram): noise_multiplier = noise std / L2 sensitivity.

    `threshold_delta` > 0: the release keeps only cells whose noisy count clears a threshold set from it (cells
    read from the data); that much δ is spent outside the PLD (module docstring)."""

    noise_multiplier: float
    purpose: str
    threshold_delta: float = 0.0

    name = "gaussian"

    def __post_init__(self) -> None:
        _check_sigma(self.noise_multiplier)
        if not 0 <= self.threshold_delta < 1:
            raise DpsynthError(f"a threshold's δ must be in [0, 1), got {self.threshold_delta}")

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "noise_multiplier": float(self.noise_multiplier), "purpose": self.purpose}
        if self.threshold_delta > 0:
            d["threshold_delta"] = float(self.threshold_delta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GaussianMechanism:
        _expect_name(d, cls.name)
        return cls(float(d["noise_multiplier"]), str(d.get("purpose", "")), float(d.get("threshold_delta", 0.0)))


def threshold_failure_probability(threshold_delta: float, epsilon: float) -> float:
    """The largest p such that publishing a cell held only by the differing unit with probability ≤ p costs at
    most `threshold_delta` of δ in a run that is ε-DP otherwise.

    Why e^ε: couple the run with one that never publishes such cells (whose PLD gives (ε, δ_pld)). Adding the unit
    changes outputs on an event of probability ≤ p: + p. Removing it: the run without the unit is compared with the
    coupled run, whose probabilities exceed the real one's by at most a factor 1/(1 − p): + e^ε · p / (1 − p).
    Setting the larger, e^ε·p/(1 − p), to threshold_delta gives p = threshold_delta / (e^ε + threshold_delta).
    """
    if not 0 < threshold_delta < 1:
        raise DpsynthError(f"a threshold's δ must be in (0, 1), got {threshold_delta}")
    _check_epsilon(epsilon)
    return threshold_delta / (math.exp(min(epsilon, 700.0)) + threshold_delta)


def pld_delta(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """The δ at which the PLD is read: the run's δ less what thresholded releases spend outside it."""
    spent = sum(m.threshold_delta for m in mechanisms if isinstance(m, GaussianMechanism))
    if not spent < delta:
        raise DpsynthError(f"the thresholded releases spend δ = {spent:.3g}, all of the run's δ = {delta:.3g}")
    return delta - spent


Mechanism = Union[DpSgdMechanism, GaussianMechanism]  # noqa: UP007 - a runtime alias, also for Python 3.10


def mechanism_from_dict(d: Mapping[str, Any]) -> Mechanism:
    """Rebuild a mechanism from its ledger entry (dispatch on "name")."""
    kinds: dict[str, type] = {DpSgdMechanism.name: DpSgdMechanism, GaussianMechanism.name: GaussianMechanism}
    kind = kinds.get(str(d.get("name")))
    if kind is None:
        raise DpsynthError(f"unknown mechanism {d.get('name')!r} in the privacy ledger; expected one of {list(kinds)}")
    return kind.from_dict(d)


def _expect_name(d: Mapping[str, Any], name: str) -> None:
    if d.get("name") != name:
        raise DpsynthError(f"expected a {name!r} mechanism in the privacy ledger, got {d.get('name')!r}")


def _check_sigma(sigma: float) -> None:
    if not sigma >= 0:  # also refuses NaN
        raise DpsynthError(f"a noise multiplier must be ≥ 0, got {sigma}")


# ----------------------------------------------------------------------------------------------- PLD core


def _event(m: Mechanism) -> dp_event.DpEvent:
    """The dp-accounting event of one mechanism (NoOp for one that reveals nothing; σ = 0 is non-private)."""
    if isinstance(m, DpSgdMechanism):
        if m.steps == 0 or m.sample_rate == 0 or math.isinf(m.noise_multiplier):
            return dp_event.NoOpDpEvent()
        step = dp_event.PoissonSampledDpEvent(m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier))
        return dp_event.SelfComposedDpEvent(step, int(m.steps))
    if isinstance(m, GaussianMechanism):
        if math.isinf(m.noise_multiplier):
            return dp_event.NoOpDpEvent()
        return dp_event.GaussianDpEvent(m.noise_multiplier)
    raise TypeError(f"not a mechanism: {m!r}")


def run_event(mechanisms: Sequence[Mechanism]) -> dp_event.ComposedDpEvent:
    """Every mechanism of a run as one composed event, DP-SGD first (one fixed, float-reproducible order)."""
    ordered = [m for m in mechanisms if isinstance(m, DpSgdMechanism)] + \
        [m for m in mechanisms if not isinstance(m, DpSgdMechanism)]
    return dp_event.ComposedDpEvent([_event(m) for m in ordered])


def _accountant(interval: float) -> PLDAccountant:
    return PLDAccountant(NEIGHBOURING, value_discretization_interval=interval)


@functools.lru_cache(maxsize=256)
def _epsilon_at(mechanisms: tuple[Mechanism, ...], delta: float, interval: float) -> float:
    """The one composition every ε of dpsynth comes from (ledger, calibration, progress bar): dp-accounting's PLD
    accountant over the run's event, read at δ less what thresholded releases spend outside the PLD."""
    accountant = _accountant(interval)
    accountant.compose(run_event(mechanisms))
    eps = float(accountant.get_epsilon(pld_delta(mechanisms, delta)))
    return max(0.0, eps) if not math.isnan(eps) else math.inf


def refined_interval(epsilon: float) -> float:
    """The PLD grid for reporting an ε of about this size: 1e-4, halved per halving of ε below 0.4 (≥ 1e-4/16)."""
    if not epsilon < REFINE_BELOW_EPSILON:
        return BASE_INTERVAL
    if epsilon <= 0:
        return BASE_INTERVAL / 2**MAX_REFINE_LEVELS
    k = min(MAX_REFINE_LEVELS, math.ceil(math.log2(REFINE_BELOW_EPSILON / epsilon)))
    return BASE_INTERVAL / 2**k


def compute_epsilon_with_interval(mechanisms: Sequence[Mechanism], delta: float,
                                  value_discretization_interval: float | None = None) -> tuple[float, float]:
    """(ε, grid used): the composition of all mechanisms at δ, add/remove-one, one PLD.

    Without an explicit grid: 1e-4, refined for ε < 0.4 (see the module docstring); both are upper bounds and the
    smaller is returned with its grid. No mechanisms or zero steps: ε = 0. A noiseless mechanism: ε = ∞.
    """
    _check_delta(delta)
    mechs = list(mechanisms)
    if value_discretization_interval is not None:
        if not value_discretization_interval > 0:
            raise DpsynthError("the PLD discretisation interval must be positive")
        return _epsilon_at(tuple(mechs), delta, value_discretization_interval), value_discretization_interval
    eps = _epsilon_at(tuple(mechs), delta, BASE_INTERVAL)
    interval = refined_interval(eps)
    if eps == 0 or math.isinf(eps) or interval == BASE_INTERVAL:
        return eps, BASE_INTERVAL
    fine = _epsilon_at(tuple(mechs), delta, interval)
    return (fine, interval) if fine < eps else (eps, BASE_INTERVAL)


def compute_epsilon(mechanisms: Sequence[Mechanism], delta: float, *,
                    value_discretization_interval: float | None = None) -> float:
    """ε of the composition of all mechanisms at δ (add/remove one, tight PLD; an upper bound on the true ε)."""
    return compute_epsilon_with_interval(mechanisms, delta, value_discretization_interval)[0]


# ----------------------------------------------------------------------------------------------- calibration


def _check_epsilon(epsilon: float) -> None:
    if math.isnan(epsilon) or epsilon <= 0:
        raise DpsynthError(f"ε must be a positive number, got {epsilon}; pass e.g. --epsilon 4 (or inf for no DP)")
    if math.isinf(epsilon):
        raise DpsynthError("ε = ∞ means no differential privacy, so there is no noise to calibrate; "
                           "train without DP instead")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise DpsynthError(f"δ must be in (0, 1), got {delta}; use the default 1/(N ln N)")


def _check_schedule(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise DpsynthError(f"the sampling rate q = batch size / N must be in (0, 1], got {sample_rate}; "
                           "use a batch size between 1 and the number of records")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise DpsynthError(f"DP training needs at least one step, got {steps}; increase the number of epochs")


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               other_mechanisms: Sequence[Mechanism] = ()) -> float:
    """The smallest DP-SGD noise multiplier σ (to 0.1 %) whose composition with `other_mechanisms` is (ε, δ)-DP.

    dp-accounting's calibration (Brent's method) over the same composition as the ledger's, first on a 10×
    coarser grid (cheap, and pessimistic, so its answer is feasible), then on the reported grid in a narrow
    bracket below it. Feasible under `compute_epsilon` (checked there). Raises DpsynthError if the other mechanisms
    already spend the budget, or if even σ = 50 is not enough.
    """
    _check_epsilon(target_epsilon)
    _check_delta(delta)
    _check_schedule(sample_rate, steps)
    others = tuple(other_mechanisms)
    eps_others = compute_epsilon(others, delta)
    if eps_others >= target_epsilon:
        raise DpsynthError(f"the other releases already spend ε = {eps_others:.3g} of the target ε = "
                           f"{target_epsilon:g}, leaving nothing for training; give them a smaller share of ε")

    def mechanisms(sigma: float) -> tuple[Mechanism, ...]:
        return (DpSgdMechanism(sigma, sample_rate, int(steps)), *others)

    eps_max = compute_epsilon(mechanisms(MAX_NOISE_MULTIPLIER), delta)
    if eps_max > target_epsilon:
        raise DpsynthError(
            f"ε = {target_epsilon:g} is out of reach for {int(steps)} steps at sampling rate {sample_rate:.3g}: even "
            f"noise multiplier {MAX_NOISE_MULTIPLIER:g} (pure noise) spends ε = {eps_max:.3g}; use fewer epochs or a "
            f"smaller batch, or a larger ε")
    fine = refined_interval(target_epsilon)
    coarse_grid = SEARCH_COARSENING * fine

    def coarse_feasible(sigma: float) -> bool:
        return _epsilon_at(mechanisms(sigma), delta, coarse_grid) <= target_epsilon

    lo, hi = _bracket(coarse_feasible, 1.0)
    if lo == hi:  # even the smallest σ considered meets the target
        return hi
    coarse = _calibrate(mechanisms, target_epsilon, delta, coarse_grid, mc.ExplicitBracketInterval(lo, hi),
                        tol=2 * CALIBRATION_RTOL * lo)
    # The coarse grid overstates ε, so the answer on the fine grid lies at or below it, within its pessimism.
    low = max(MIN_NOISE_MULTIPLIER, coarse / 1.02)
    if compute_epsilon(mechanisms(low), delta) <= target_epsilon:
        low = _bracket(lambda sigma: compute_epsilon(mechanisms(sigma), delta) <= target_epsilon, low)[0]
        if compute_epsilon(mechanisms(low), delta) <= target_epsilon:
            return low
    sigma = _calibrate(mechanisms, target_epsilon, delta, fine, mc.ExplicitBracketInterval(low, coarse),
                       tol=CALIBRATION_RTOL * low)
    while compute_epsilon(mechanisms(sigma), delta) > target_epsilon:  # the reported rule may refine the grid
        sigma *= 1 + CALIBRATION_RTOL / 4
    return sigma


def _bracket(feasible: Callable[[float], bool], guess: float, factor: float = 1.5) -> tuple[float, float]:
    """(infeasible σ, feasible σ) around the answer, by steps of `factor` from `guess` within [MIN, MAX]; (σ, σ)
    when MIN itself is feasible. Brent's method then needs only the narrow interval."""
    if feasible(guess):
        hi = guess
        while hi > MIN_NOISE_MULTIPLIER:
            lo = max(MIN_NOISE_MULTIPLIER, hi / factor)
            if not feasible(lo):
                return lo, hi
            hi = lo
        return hi, hi
    lo = guess
    while lo < MAX_NOISE_MULTIPLIER:
        hi = min(MAX_NOISE_MULTIPLIER, lo * factor)
        if feasible(hi):
            return lo, hi
        lo = hi
    return lo, MAX_NOISE_MULTIPLIER  # the caller checked that MAX is feasible


def _calibrate(mechanisms: Callable[[float], tuple[Mechanism, ...]], target_epsilon: float, delta: float,
               interval: float, bracket: mc.BracketInterval, *, tol: float) -> float:
    """dp-accounting's calibration of σ on one PLD grid: the smallest σ in the bracket that meets the target, to
    within `tol` (absolute)."""
    return float(mc.calibrate_dp_mechanism(
        lambda: _accountant(interval), lambda sigma: run_event(mechanisms(sigma)), target_epsilon,
        pld_delta(mechanisms(MAX_NOISE_MULTIPLIER), delta), bracket_interval=bracket, tol=tol))


def gaussian_noise_for_epsilon(epsilon: float, delta: float) -> float:
    """σ (noise std / L2 sensitivity) of a single Gaussian mechanism that is exactly (ε, δ)-DP, add/remove one.

    Uses the analytic Gaussian mechanism (Balle & Wang 2018) via dp_accounting, which is exact for one release.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    return float(get_sigma_gaussian(epsilon, delta))


# ----------------------------------------------------------------------------------------------- budget plan


@dataclass(frozen=True)
class BudgetPlan:
    """The noise of every mechanism of a run, and the total ε of their joint composition (≤ the target)."""

    dpsgd: DpSgdMechanism
    label_histogram: GaussianMechanism | None
    epsilon: float
    delta: float

    @property
    def mechanisms(self) -> list[Mechanism]:
        return [self.dpsgd] + ([self.label_histogram] if self.label_histogram is not None else [])


def plan_budget(target_epsilon: float, delta: float, num_units: int, sample_rate: float, steps: int,
                label_fraction: float | None = None, label_threshold: bool = False) -> BudgetPlan:
    """Fix every noise level of a DP run so that the whole run is (target ε, δ)-DP.

    With `label_fraction = f`, the label histogram gets σ_h = gaussian_noise_for_epsilon(f·ε, δ) — the noise of a
    Gaussian that *alone* would be (f·ε, δ)-DP. f·ε and δ only set the histogram's noise scale; the guarantee is
    the joint PLD composition of histogram and DP-SGD, which DP-SGD's σ is then calibrated to meet (composition is
    sub-additive, so the histogram costs the run less than f·ε). With `label_threshold` (label values read from
    the data, so only combinations whose noisy count clears a threshold are published) THRESHOLD_DELTA_SHARE of δ
    goes to that threshold and the PLD is read at the rest.

    ε = ∞ is refused (DpsynthError): a non-private run has no budget to plan; callers skip planning instead.
    """
    _check_epsilon(target_epsilon)
    if isinstance(num_units, bool) or int(num_units) != num_units or num_units < 3:
        raise DpsynthError(f"DP training needs at least 3 privacy units (records or users), got {num_units}")
    if not 0 < delta < 1.0 / num_units:
        raise DpsynthError(f"δ must be in (0, 1/N) = (0, {1.0 / num_units:.3g}), got {delta:.3g}; use the default "
                           f"1/(N ln N) = {default_delta(int(num_units)):.3g}")
    _check_schedule(sample_rate, steps)
    hist = None
    if label_fraction is not None:
        if not 0 < label_fraction < 1:
            raise DpsynthError(f"the label histogram's share of ε must be in (0, 1), got {label_fraction}; "
                               "or use a public label distribution")
        hist = GaussianMechanism(gaussian_noise_for_epsilon(label_fraction * target_epsilon, delta),
                                 "label histogram", THRESHOLD_DELTA_SHARE * delta if label_threshold else 0.0)
    sigma = calibrate_noise_multiplier(target_epsilon, delta, sample_rate, int(steps),
                                       [hist] if hist is not None else [])
    dpsgd = DpSgdMechanism(sigma, float(sample_rate), int(steps))
    plan = BudgetPlan(dpsgd, hist, 0.0, delta)
    return BudgetPlan(dpsgd, hist, compute_epsilon(plan.mechanisms, delta), delta)


# ----------------------------------------------------------------------------------------------- tracker


class EpsilonTracker:
    """ε spent after t DP-SGD steps, composed with other mechanisms, for a progress bar: the ledger's composition
    on one fixed grid (1e-4 by default, the reported grid for ε ≥ 0.4; a slightly pessimistic upper bound below)."""

    def __init__(self, mechanisms_other: Sequence[Mechanism], noise_multiplier: float, sample_rate: float,
                 delta: float, *, value_discretization_interval: float = BASE_INTERVAL) -> None:
        _check_delta(delta)
        _check_sigma(noise_multiplier)
        if not 0 <= sample_rate <= 1:
            raise DpsynthError(f"the sampling rate must be in [0, 1], got {sample_rate}")
        self.others = list(mechanisms_other)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.interval = float(value_discretization_interval)

    def mechanisms(self, steps: int) -> list[Mechanism]:
        return [DpSgdMechanism(self.noise_multiplier, self.sample_rate, int(steps)), *self.others]

    def epsilon(self, steps: int) -> float:
        if steps < 0:
            raise ValueError("steps must be ≥ 0")
        return _epsilon_at(tuple(self.mechanisms(steps)), self.delta, self.interval)
