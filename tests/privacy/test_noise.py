"""The noise source: correct Gaussian moments, reproducible when seeded, unpredictable when secure.

Tolerances are 5 standard errors: for n draws of N(0, s²) the sample mean has SE s/√n and the sample std has SE
≈ s/√(2n); a fraction p has SE √(p(1−p)/n).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpsynth.privacy import noise as noise_module
from dpsynth.privacy.noise import NoiseSource

N = 1_000_000


@pytest.mark.parametrize(("dtype", "secure"), [(torch.float32, False), (torch.float64, False), (torch.float32, True)])
def test_moments_and_shape_of_a_large_draw(dtype: torch.dtype, secure: bool) -> None:
    s = 2.5
    like = torch.empty(1000, 1000, dtype=dtype)
    x = NoiseSource(seed=11, secure=secure).normal_like(like, s)
    assert x.shape == like.shape and x.dtype == dtype and x.device == like.device
    x64 = x.double().flatten()
    assert abs(x64.mean().item()) < 5 * s / math.sqrt(N)
    assert abs(x64.std().item() - s) < 5 * s / math.sqrt(2 * N)
    p = stats.norm.cdf(1) - stats.norm.cdf(-1)
    within = (x64.abs() <= s).double().mean().item()
    assert abs(within - p) < 5 * math.sqrt(p * (1 - p) / N)
    # Shape of the whole distribution, on a subsample (the KS test is very sensitive at 1e6 points).
    assert stats.kstest(x64[:20_000].numpy() / s, "norm").pvalue > 1e-3


def test_low_precision_noise_is_rounded_from_fp32() -> None:
    x = NoiseSource(seed=3).normal_like(torch.zeros(300_000, dtype=torch.bfloat16), 1.0)
    assert x.dtype == torch.bfloat16
    assert abs(x.double().std().item() - 1.0) < 0.01  # bf16 rounding changes the std by < 0.5 %
    ref = NoiseSource(seed=3).normal_like(torch.zeros(300_000), 1.0)
    assert torch.equal(x, ref.to(torch.bfloat16))


def test_seeded_draws_are_reproducible_and_successive_draws_independent() -> None:
    a, b = NoiseSource(seed=1234), NoiseSource(seed=1234)
    t = torch.zeros(10_000)
    a1, a2 = a.normal_like(t, 1.0), a.normal_like(t, 1.0)
    assert torch.equal(a1, b.normal_like(t, 1.0)) and torch.equal(a2, b.normal_like(t, 1.0))
    assert not torch.equal(a1, NoiseSource(seed=1235).normal_like(t, 1.0))
    corr = torch.corrcoef(torch.stack([a1, a2]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(t.numel())
    assert NoiseSource(seed=1234).describe() == "seeded PRNG (seed 1234)"


def test_noise_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    NoiseSource(seed=5).normal_like(torch.zeros(100), 1.0)
    assert torch.equal(torch.rand(3), expected)


def test_state_round_trip_continues_the_noise() -> None:
    src = NoiseSource(seed=42)
    t = torch.zeros(1000)
    src.normal_like(t, 1.0)
    state = copy.deepcopy(src.state_dict())  # as if saved in a checkpoint
    expected = src.normal_like(t, 1.0)
    resumed = NoiseSource(seed=7)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.normal_like(t, 1.0), expected)
    with pytest.raises(ValueError):
        NoiseSource(secure=True).load_state_dict(state)
    if not torch.cuda.is_available():  # a seeded CUDA run's noise state cannot continue on a CPU-only machine
        with pytest.raises(ValueError, match="where CUDA is available"):
            NoiseSource(seed=1).load_state_dict({**state, "generators": {"cuda:0": state["generators"]["cpu"]}})


def test_secure_draws_differ_across_instances_and_draws() -> None:
    t = torch.zeros(1000)
    a, b = NoiseSource(secure=True), NoiseSource(secure=True)
    a1, a2, b1 = a.normal_like(t, 1.0), a.normal_like(t, 1.0), b.normal_like(t, 1.0)
    assert not torch.equal(a1, b1) and not torch.equal(a1, a2)
    assert abs(a1.std().item() - 1.0) < 5 / math.sqrt(2 * t.numel())
    assert a.describe().startswith("cryptographically seeded")
    assert a.state_dict() == {"secure": True}
    c, d = NoiseSource(seed=1, secure=True), NoiseSource(seed=1, secure=True)  # the seed is ignored
    assert not torch.equal(c.normal_like(t, 1.0), d.normal_like(t, 1.0))


def _reference_mt19937(words: np.ndarray, n: int) -> np.ndarray:
    """numpy's independent MT19937 keyed with exactly these 624 words (pos 624: twist before the first output)."""
    ref = np.random.MT19937()
    ref.state = {"bit_generator": "MT19937", "state": {"key": words.astype(np.uint32), "pos": 624}}
    return ref.random_raw(n).astype(np.int64)


def _first_outputs(gen: torch.Generator, n: int) -> np.ndarray:
    # torch's random_ takes 64 bits per value and keeps the low 31 of the second 32-bit output.
    return torch.empty(n, dtype=torch.int32).random_(0, 2**31, generator=gen).numpy().astype(np.int64)


def test_secure_cpu_noise_uses_the_whole_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU generator's whole Mersenne Twister state is the OS secret. It used to be seeded with a 64-bit value
    of which torch keeps 32 bits: 2³² possible noise draws, few enough to try them all."""
    secret = np.random.default_rng(5).bytes(4 * 624)
    monkeypatch.setattr(noise_module.secrets, "token_bytes", lambda n: secret[:n])
    gen = NoiseSource(secure=True)._generator(torch.device("cpu"))
    want = _reference_mt19937(np.frombuffer(secret, "<u4"), 2000)[1::2] & 0x7FFFFFFF
    assert np.array_equal(_first_outputs(gen, 1000), want)
    # Every part of the secret changes the noise (word 0 keeps only its top bit in mt19937's recurrence).
    t = torch.zeros(1000)
    base = NoiseSource(secure=True).normal_like(t, 1.0)
    for bit in (31, 32, 40, 63, 64, 100, 127, 128, 5000, 19_967):
        flipped = bytearray(secret)
        flipped[bit // 8] ^= 1 << (bit % 8)
        monkeypatch.setattr(noise_module.secrets, "token_bytes", lambda n, f=bytes(flipped): f[:n])
        assert not torch.equal(NoiseSource(secure=True).normal_like(t, 1.0), base), f"bit {bit} is ignored"


def test_seeded_cpu_noise_state_comes_from_the_whole_seed_sequence() -> None:
    src = NoiseSource(seed=2**40 + 3)
    gen = src._generator(torch.device("cpu"))
    words = src._device_seed_sequence(torch.device("cpu")).generate_state(624, dtype=np.uint32)
    assert np.array_equal(_first_outputs(gen, 500), _reference_mt19937(words, 1000)[1::2] & 0x7FFFFFFF)
    t = torch.zeros(1000)  # seeds that agree in their low 32 bits give different noise
    assert not torch.equal(NoiseSource(seed=3).normal_like(t, 1.0), NoiseSource(seed=2**40 + 3).normal_like(t, 1.0))


def test_std_zero_and_bad_arguments() -> None:
    src = NoiseSource(seed=0)
    assert torch.equal(src.normal_like(torch.ones(5), 0.0), torch.zeros(5))
    with pytest.raises(ValueError):
        src.normal_like(torch.ones(5), -1.0)
    with pytest.raises(TypeError):
        src.normal_like(torch.ones(5, dtype=torch.long), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_stay_on_the_device_and_resume() -> None:
    src = NoiseSource(seed=9)
    t = torch.zeros(1000, device="cuda")
    x = src.normal_like(t, 1.0)
    assert x.device == t.device
    state = copy.deepcopy(src.state_dict())
    y = src.normal_like(t, 1.0)
    resumed = NoiseSource(seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.normal_like(t, 1.0), y)
    secure = NoiseSource(secure=True)  # a random Philox key and counter offset before every draw
    a, b = secure.normal_like(t, 1.0), secure.add_normal_(torch.zeros_like(t), 1.0)
    assert a.device == t.device and not torch.equal(a, b) and abs(a.std().item() - 1.0) < 0.2


def test_add_normal_adds_independent_noise_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise_module, "_CHUNK_ELEMENTS", 1000)  # many chunk boundaries in a small draw
    s, n = 0.7, 200_500  # not a multiple of the chunk: the last chunk is partial
    base = torch.arange(n, dtype=torch.float32).remainder_(7)  # small values: the noise is not rounded away
    x = NoiseSource(seed=9).add_normal_(base.clone(), s)
    d = (x - base).double()
    assert abs(d.mean().item()) < 5 * s / math.sqrt(n)
    assert abs(d.std().item() - s) < 5 * s / math.sqrt(2 * n)
    assert (d[-500:] != 0).all()  # the partial last chunk gets noise too
    chunks = d[: 200 * 1000].view(200, 1000)
    # A reused buffer that was not redrawn would repeat itself: consecutive chunks must be uncorrelated.
    corr = (chunks[:-1] * chunks[1:]).sum(1) / (chunks[:-1].norm(dim=1) * chunks[1:].norm(dim=1))
    assert corr.abs().max().item() < 5 / math.sqrt(1000)
    assert stats.kstest(d[:20_000].numpy() / s, "norm").pvalue > 1e-3


def test_add_normal_is_seeded_and_refuses_what_it_cannot_noise_in_place() -> None:
    a = NoiseSource(seed=5).add_normal_(torch.zeros(5000), 1.0)
    assert torch.equal(a, NoiseSource(seed=5).add_normal_(torch.zeros(5000), 1.0))
    with pytest.raises(TypeError):
        NoiseSource(seed=5).add_normal_(torch.zeros(10, dtype=torch.bfloat16), 1.0)
    with pytest.raises(TypeError):
        NoiseSource(seed=5).add_normal_(torch.zeros(4, 4).t(), 1.0)
    with pytest.raises(ValueError):
        NoiseSource(seed=5).add_normal_(torch.zeros(4), float("nan"))
