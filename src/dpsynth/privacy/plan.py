"""The privacy plan of a run: the public schedule, every noise level, what is declared public, and the randomness
each mechanism draws from.

Everything here is fixed before the private data is looked at, except N (the number of privacy units), which
dpsynth treats as public, as DP-SGD accountants do: it sets the sampling rate q = batch / N, the number of steps
T = epochs / q and the default δ = 1/(N ln N). σ is then calibrated so that the joint composition of DP-SGD and
the label histogram is (ε, δ)-DP (`accounting.plan_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dpsynth.errors import DpsynthError
from dpsynth.privacy.accounting import (
    DpSgdMechanism,
    EpsilonTracker,
    GaussianMechanism,
    default_delta,
    plan_budget,
)
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.noise import NoiseSource
from dpsynth.privacy.sampling import PoissonSampler

WEAK_SIGNAL = 0.1  # noise per update in clip norms above which a run is warned that it will learn little


@dataclass(frozen=True)
class PlanRequest:
    """What the plan is made from: public settings, and N."""

    epsilon: float
    delta: float | None  # None: 1/(N ln N)
    num_units: int
    unit: Literal["record", "user"]
    expected_batch_size: int
    epochs: float
    clip_norm: float
    max_tokens: int
    has_labels: bool = False
    label_values_declared: bool = False
    label_distribution: str = "dp"  # "dp" (a noisy histogram), or a distribution declared public
    label_budget_fraction: float = 0.05
    secure_rng: bool = True
    records_per_user_cap: int | None = None
    user_column: str | None = None


@dataclass
class PrivacyPlan:
    """The schedule (q, T), the mechanisms' noise, δ and the declarations of a run; non-private when ε = ∞."""

    request: PlanRequest
    sample_rate: float
    steps: int
    delta: float | None
    dpsgd: DpSgdMechanism | None = None
    label_histogram: GaussianMechanism | None = None
    declarations: list[str] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return self.dpsgd is not None

    @property
    def num_units(self) -> int:
        return self.request.num_units

    @property
    def expected_batch_size(self) -> float:
        return float(self.request.expected_batch_size)

    @property
    def noise_multiplier(self) -> float | None:
        return None if self.dpsgd is None else self.dpsgd.noise_multiplier

    def new_ledger(self) -> PrivacyLedger:
        """An empty ledger for this plan: DP-SGD with 0 steps taken (steps are counted as they are taken)."""
        r = self.request
        if not self.private:
            return PrivacyLedger(delta=None, unit=r.unit, num_units=r.num_units, non_private=True,
                                 notes=list(self.declarations))
        assert self.dpsgd is not None and self.delta is not None
        ledger = PrivacyLedger(delta=self.delta, unit=r.unit, num_units=r.num_units, clip_norm=r.clip_norm,
                               epsilon_target=r.epsilon, records_per_user_cap=r.records_per_user_cap,
                               noise_rng="secure" if r.secure_rng else "seeded", notes=list(self.declarations))
        ledger.add(DpSgdMechanism(self.dpsgd.noise_multiplier, self.sample_rate, 0))
        return ledger

    def tracker(self) -> EpsilonTracker:
        """ε after t steps, composed with the label histogram, for the progress bar."""
        assert self.dpsgd is not None and self.delta is not None
        others = [self.label_histogram] if self.label_histogram is not None else []
        return EpsilonTracker(others, self.dpsgd.noise_multiplier, self.sample_rate, self.delta)

    def weak_signal_warning(self) -> str | None:
        """A warning when the noise will drown what training could learn: σ / (q·N), the noise std of the averaged
        update in clip norms, above WEAK_SIGNAL (10× the smallest setting the benchmarks learnt from,
        docs/training.md). Such a run is reachable, so it is not refused; it just buys hours of training."""
        if self.dpsgd is None:
            return None
        sigma = self.dpsgd.noise_multiplier
        per_update = sigma / max(self.expected_batch_size, 1e-12)
        if per_update <= WEAK_SIGNAL:
            return None
        return (f"the noise multiplier is σ = {sigma:.3g} at an expected batch of {self.expected_batch_size:.0f}, so "
                f"each update's noise is {per_update:.2g} clip norms — over 10× the 0.01 of the smallest setting "
                "dpsynth's benchmarks learnt from (N = 800, ε = 4): expect the synthetic text to carry little of "
                "the data. More records, a larger --batch-size or a larger --epsilon lower it.")

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": self.steps, "sample_rate": self.sample_rate,
                             "expected_batch_size": self.expected_batch_size, "notes": list(self.declarations)}
        if self.dpsgd is not None:
            d["noise_multiplier"] = self.dpsgd.noise_multiplier
            if self.label_histogram is not None:
                d["label_histogram_noise_multiplier"] = self.label_histogram.noise_multiplier
        return d


def plan_privacy(request: PlanRequest) -> PrivacyPlan:
    """Fix the public schedule (q, T) from N and the settings, then calibrate σ for the target (ε, δ)."""
    r = request
    if r.num_units < 2:
        raise DpsynthError("the dataset needs at least 2 records to train on")
    q = r.expected_batch_size / r.num_units
    steps = max(1, math.ceil(r.epochs / q))
    declarations = _declarations(r)
    if not math.isfinite(r.epsilon):
        return PrivacyPlan(r, q, steps, None, declarations=declarations)
    delta = r.delta if r.delta is not None else default_delta(r.num_units)
    histogram = r.has_labels and r.label_distribution == "dp"
    budget = plan_budget(r.epsilon, delta, num_units=r.num_units, sample_rate=q, steps=steps,
                         label_fraction=r.label_budget_fraction if histogram else None,
                         label_threshold=histogram and not r.label_values_declared)
    return PrivacyPlan(r, q, steps, delta, budget.dpsgd, budget.label_histogram, declarations)


def _declarations(r: PlanRequest) -> list[str]:
    """What the run treats as public, in the ledger's words."""
    notes = [
        f"The number of {r.unit}s N is treated as public (it sets the sampling rate and δ).",
        f"The training length ({r.max_tokens} tokens) is a fixed public setting, not chosen from the data.",
        *_label_declarations(r),
        "No checkpoint or hyper-parameter is selected using the private data.",
    ]
    if r.unit == "user":
        notes.append(f"Privacy unit: the user ('{r.user_column}'); each user's first {r.records_per_user_cap} "
                     "records are kept and clipped together.")
    if math.isfinite(r.epsilon) and not r.secure_rng:
        notes.append("Noise and batches come from a PRNG seeded with --seed (recorded in run.json) so the run is "
                     "reproducible; whoever knows the seed can regenerate the noise, so keep run.json private or "
                     "train with --secure-rng before publishing the model.")
    return notes


def _label_declarations(r: PlanRequest) -> list[str]:
    if not r.has_labels:
        return []
    dp = r.label_distribution == "dp"
    notes = []
    if not math.isfinite(r.epsilon):
        pass  # no DP: the exact label mix is used
    elif r.label_values_declared:
        notes.append("Each label column's values are declared public (--label-values)"
                     + ("; the label proportions are protected by the DP histogram." if dp else "."))
    elif dp:
        notes.append("Label values are not treated as public: they are read from the data and only combinations "
                     "whose noisy count clears the DP threshold are published (the threshold's δ is in the ledger).")
    if not dp:
        notes.append(f"Labels for sampling come from a distribution declared public: {r.label_distribution}.")
    return notes


# ------------------------------------------------------------------------------------------ randomness
def seeded_stream(seed: int, purpose: str) -> np.random.SeedSequence:
    """The seeded (--no-secure-rng) stream of one mechanism. Each purpose gets its own stream from the one --seed:
    mechanisms composed by the accountant must draw independent randomness, and `default_rng(seed)` in two places
    would hand the batch sampler and the label histogram the very same bits."""
    return np.random.SeedSequence([abs(seed), int(seed < 0), *purpose.encode()])


def batch_sampler(plan: PrivacyPlan, *, secure: bool, seed: int, shared_secret: Callable[[], int]) -> PoissonSampler:
    """The Poisson sampler of DP-SGD. The batches must stay secret (amplification by subsampling assumes nobody can
    replay them): secure, it draws from one secret of rank 0's OS randomness, the same on every rank."""
    if secure:
        return PoissonSampler(plan.num_units, plan.sample_rate, generator=np.random.default_rng(shared_secret()),
                              secure=True)
    return PoissonSampler(plan.num_units, plan.sample_rate,
                          generator=np.random.default_rng(seeded_stream(seed, "batches")))


def noise_source(*, secure: bool, seed: int) -> NoiseSource:
    """DP-SGD's Gaussian noise: OS randomness, or a stream seeded apart from every other use of --seed."""
    return NoiseSource(seed=seed + 1, secure=secure)


def label_generator(*, secure: bool, seed: int, shared_secret: Callable[[], int]) -> np.random.Generator:
    """The label histogram's noise: rank 0's secret (every rank draws the same histogram), or a seeded stream."""
    return np.random.default_rng(shared_secret() if secure else seeded_stream(seed, "label histogram"))
