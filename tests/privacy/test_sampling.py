"""Poisson sampling: the realised batches have the distribution the accountant assumes.

Tolerances are 5 standard errors of the statistic being checked (seeds are fixed, so the tests are deterministic;
5 SE means a correct sampler would fail with probability ~1e-6 for a fresh seed, while a fixed-size sampler fails
the variance check by hundreds of SE).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from dpsynth.privacy.sampling import PoissonSampler


def test_batch_sizes_are_binomial() -> None:
    n, q, steps = 10_000, 0.01, 4000
    sampler = PoissonSampler(n, q, seed=1)
    sizes = np.array([len(sampler.sample_step()) for _ in range(steps)])
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / steps)
    # SE of a sample variance ≈ σ² √(2/(m−1)) (near-normal counts: mean 100).
    assert abs(sizes.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (steps - 1))
    assert sampler.expected_batch_size == pytest.approx(mean)


def test_empty_batches_happen_at_the_binomial_rate() -> None:
    n, q, steps = 100, 0.01, 5000
    sampler = PoissonSampler(n, q, seed=2)
    empty = sum(len(sampler.sample_step()) == 0 for _ in range(steps)) / steps
    p0 = (1 - q) ** n  # ≈ 0.366
    assert abs(empty - p0) < 5 * math.sqrt(p0 * (1 - p0) / steps)


def test_indices_are_distinct_sorted_and_in_range() -> None:
    n = 5000
    sampler = PoissonSampler(n, 0.3, seed=3)
    for _ in range(50):
        idx = sampler.sample_step()
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)  # strictly increasing: sorted and no duplicates
        assert idx.size == 0 or (idx[0] >= 0 and idx[-1] < n)
    full = PoissonSampler(50, 1.0, seed=0).sample_step()
    assert full.tolist() == list(range(50))


def test_each_unit_is_included_with_probability_q() -> None:
    n, q, steps = 200, 0.1, 5000
    sampler = PoissonSampler(n, q, seed=4)
    counts = np.zeros(n)
    pair = 0  # co-inclusion of units 0 and 1: independent inclusion gives q²
    for _ in range(steps):
        idx = sampler.sample_step()
        counts[idx] += 1
        pair += int(0 in idx and 1 in idx)
    freq = counts / steps
    assert np.max(np.abs(freq - q)) < 5 * math.sqrt(q * (1 - q) / steps)
    assert abs(pair / steps - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / steps)


def test_same_seed_same_stream_and_secure_streams_differ() -> None:
    a, b = PoissonSampler(1000, 0.05, seed=7), PoissonSampler(1000, 0.05, seed=7)
    assert all(np.array_equal(a.sample_step(), b.sample_step()) for _ in range(5))
    s1, s2 = PoissonSampler(1000, 0.05, secure=True), PoissonSampler(1000, 0.05, secure=True)
    assert not all(np.array_equal(s1.sample_step(), s2.sample_step()) for _ in range(5))
    with pytest.raises(ValueError):
        PoissonSampler(10, 0.5, seed=1, generator=np.random.default_rng(1))
    with pytest.raises(ValueError):  # a seed would make a "secure" stream replayable
        PoissonSampler(10, 0.5, seed=1, secure=True)


def test_secure_state_keeps_no_stream_and_a_resume_draws_fresh_batches() -> None:
    """A checkpoint of a secure run must not let its holder replay past batches (which records trained when)."""
    shared = np.random.default_rng(12345)  # e.g. a secret every rank shares under torchrun
    sampler = PoissonSampler(10_000, 0.01, generator=shared, secure=True, num_steps=20)
    for _ in range(6):
        sampler.sample_step()
    state = copy.deepcopy(sampler.state_dict())
    assert "bit_generator" not in state and state["secure"] is True and state["steps_taken"] == 6
    replay = PoissonSampler(10_000, 0.01, generator=np.random.default_rng(12345))
    past = [replay.sample_step() for _ in range(6)]
    resumed = PoissonSampler(10_000, 0.01, secure=True, num_steps=20)
    resumed.load_state_dict(state)
    assert resumed.steps_taken == 6 and len(resumed) == 14
    assert not any(np.array_equal(resumed.sample_step(), p) for p in past)
    with pytest.raises(ValueError):
        PoissonSampler(10_000, 0.01, seed=5).load_state_dict(state)
    with pytest.raises(ValueError):
        PoissonSampler(10_000, 0.01, secure=True).load_state_dict(PoissonSampler(10_000, 0.01, seed=5).state_dict())


def test_state_round_trip_continues_the_stream() -> None:
    sampler = PoissonSampler(10_000, 0.01, seed=5, num_steps=20)
    for _ in range(6):
        sampler.sample_step()
    state = copy.deepcopy(sampler.state_dict())  # as if saved in a checkpoint
    expected = [sampler.sample_step() for _ in range(5)]

    resumed = PoissonSampler(10_000, 0.01, seed=999, num_steps=20)
    resumed.load_state_dict(state)
    assert resumed.steps_taken == 6
    assert all(np.array_equal(x, y) for x, y in zip(expected, (resumed.sample_step() for _ in range(5))))
    assert len(resumed) == 9 and len(list(resumed)) == 9  # bounded: 20 steps in total across the resume
    with pytest.raises(ValueError):
        PoissonSampler(10_001, 0.01, seed=5).load_state_dict(state)


def test_bounded_iteration() -> None:
    batches = list(PoissonSampler(100, 0.2, seed=0, num_steps=7))
    assert len(batches) == 7
    with pytest.raises(TypeError):
        len(PoissonSampler(100, 0.2, seed=0))


def test_bad_arguments() -> None:
    for args in [(0, 0.1), (10, 0.0), (10, 1.5)]:
        with pytest.raises(ValueError):
            PoissonSampler(*args, seed=0)
