"""Poisson sampling of privacy units: the batch construction the accountant assumes.

Each logical step includes every unit independently with probability q, so batch sizes vary (Binomial(N, q)) and
may be 0 — an empty batch is a valid step (its update is pure noise) and is counted. Fixed-size shuffled batches
would break the subsampling analysis the accountant uses; this module never makes them.

Secrecy of the batches: privacy amplification by subsampling assumes nobody knows which units were drawn. With a
seed, anyone who learns the seed can replay the batches. `secure=True` marks the stream secret: it is seeded from
128 bits of the OS's cryptographic randomness (or from a generator the caller seeded that way, e.g. one secret
shared by every rank under torchrun), and its state is never put in a checkpoint — a resumed run continues with a
fresh secret seed, which is as good for the accountant, since every step is an independent draw.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np


class PoissonSampler:
    """Draws the units of each DP-SGD step: each unit independently with probability `sample_rate`.

    How a step is drawn (fast for millions of units): first k ~ Binomial(N, q), then k distinct units uniformly at
    random without replacement. This has exactly the distribution of N independent Bernoulli(q) inclusions:
    under Bernoulli sampling a set S has probability q^|S| (1−q)^(N−|S|), which depends on S only through |S|.
    Hence |S| ~ Binomial(N, q), and given |S| = k every k-subset is equally likely (probability 1 / C(N, k)) —
    precisely "draw k from the binomial, then a uniform k-subset".

    Randomness: `generator` (used as is), else `secure=True` (seeded from 128 bits of OS randomness), else `seed`
    (None: numpy's fresh entropy). `secure=True` also keeps the generator's state out of `state_dict`.
    """

    def __init__(self, num_units: int, sample_rate: float, seed: int | None = None,
                 generator: np.random.Generator | None = None, *, num_steps: int | None = None,
                 secure: bool = False) -> None:
        if num_units < 1:
            raise ValueError(f"num_units must be ≥ 1, got {num_units}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_steps is not None and num_steps < 0:
            raise ValueError(f"num_steps must be ≥ 0, got {num_steps}")
        if seed is not None and (generator is not None or secure):
            raise ValueError("a seed makes the batches replayable: pass it without a generator and secure=False")
        self.num_units = int(num_units)
        self.sample_rate = float(sample_rate)
        self.num_steps = num_steps
        self.secure = secure
        if generator is not None:
            self.rng = generator
        else:
            # numpy takes 128-bit seeds natively (SeedSequence), so the secure seed loses nothing.
            self.rng = np.random.default_rng(secrets.randbits(128) if secure else seed)
        self.steps_taken = 0

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.num_units

    def sample_step(self) -> np.ndarray:
        """The sorted unit indices (int64, distinct, possibly empty) of the next step."""
        k = int(self.rng.binomial(self.num_units, self.sample_rate))
        if k == self.num_units:
            idx = np.arange(self.num_units, dtype=np.int64)
        else:
            idx = self.rng.choice(self.num_units, size=k, replace=False).astype(np.int64, copy=False)
            idx.sort()
        self.steps_taken += 1
        return idx

    def __iter__(self) -> Iterator[np.ndarray]:
        """Steps until `num_steps` have been taken in total (counting steps before a resume); endless if None."""
        while self.num_steps is None or self.steps_taken < self.num_steps:
            yield self.sample_step()

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an unbounded PoissonSampler has no length; pass num_steps")
        return max(0, self.num_steps - self.steps_taken)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the step count, and (seeded mode only) the generator state to continue the
        same stream. A secure sampler's state would let anyone holding the checkpoint replay past batches."""
        state: dict[str, Any] = {"steps_taken": self.steps_taken, "num_units": self.num_units,
                                 "sample_rate": self.sample_rate, "secure": self.secure}
        if not self.secure:
            state["bit_generator"] = self.rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_units"] != self.num_units or state["sample_rate"] != self.sample_rate:
            raise ValueError("the sampler state is for a different dataset size or sampling rate; "
                             "a resumed run must keep both (the accountant assumed them)")
        if bool(state.get("secure", False)) != self.secure:
            raise ValueError("cannot resume a seeded sampler as a secure one or the other way round")
        if self.secure:
            self.steps_taken = int(state["steps_taken"])
            return
        if state["bit_generator"]["bit_generator"] != type(self.rng.bit_generator).__name__:
            raise ValueError(f"the sampler state is for a {state['bit_generator']['bit_generator']} generator")
        self.rng.bit_generator.state = state["bit_generator"]
        self.steps_taken = int(state["steps_taken"])

