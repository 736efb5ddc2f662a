"""Where the Gaussian noise of DP-SGD comes from: a seeded, reproducible PRNG or a cryptographically seeded one.

Seeded mode: one torch.Generator per device, seeded from `seed` (and the device, so two devices never share a
stream), advanced by every draw; its state goes into checkpoints so a resumed run continues the same noise.
Anyone who knows the seed can regenerate the noise and subtract it, so a seeded run's guarantee rests on the seed
staying secret.

Secure mode (`secure=True`): before *every* draw the generator is re-seeded from OS randomness (`secrets`, i.e.
os.urandom). Re-seeding per draw rather than per step costs microseconds against drawing millions of normals, and
it means no draw's noise is predictable from any other draw or any stored state: there is nothing to leak or to
checkpoint. The normals themselves still come from torch's fast generators (Mersenne Twister on CPU, Philox on
CUDA) and floating-point arithmetic; we do not claim bit-level protection against floating-point side channels in
sampling (cf. Mironov 2012).

How much of the secret a generator keeps matters: torch's CPU generator keeps only the low 32 bits of a
`manual_seed`, so seeding it with a 64- or 128-bit secret leaves 2³² possible noise draws — few enough to try them
all against a released update. On the CPU the whole Mersenne Twister state (624 words, 19,937 effective bits) is
therefore written from the secret (`_mt_state`), in secure mode from 2,496 bytes of OS randomness and in seeded
mode from the seed through numpy's SeedSequence. On CUDA, Philox takes the full 64-bit seed, and the
secret sets its counter offset too.

With data parallelism the trainer draws on rank 0 only and broadcasts the noisy sum (runtime/ranks.py), so
either mode works there.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# add_normal_ draws at most this many normals at a time (16 MB of fp32), into one reused buffer.
_CHUNK_ELEMENTS = 1 << 22


_MT_WORDS = 624  # Mersenne Twister (mt19937) state words
# torch's CPU generator state (CPUGeneratorImplStateLegacy): initial seed u64 @0, left i32 @8, seeded i32 @12,
# next u64 @16, state[624] u64 @24, then a cached double normal (valid flag i32 @5040) and a cached float normal
# (valid flag u8 @5052); 5,056 bytes in all. `_cpu_state_template` checks this layout before anyone relies on it.
_STATE_BYTES, _LEFT, _NEXT, _WORDS = 5056, 8, 16, 24
_CACHED_NORMAL_FLAGS = (5040, 5052)
_cpu_template: torch.Tensor | None = None


def _mt_init_words(seed: int) -> np.ndarray:
    """The state mt19937's standard 32-bit initialisation gives `seed` (to recognise torch's layout)."""
    words = np.empty(_MT_WORDS, dtype=np.uint64)
    words[0] = seed & 0xFFFF_FFFF
    for i in range(1, _MT_WORDS):
        prev = int(words[i - 1])
        words[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFF_FFFF
    return words


def _cpu_state_template() -> torch.Tensor:
    """A CPU generator state whose layout has been checked against a known seeding; refuses an unknown one.

    Why check: the state is a private binary layout. If a torch release changed it, writing our words at the
    offsets above would silently seed the generator with something else; better to stop with a clear error.
    """
    global _cpu_template
    if _cpu_template is None:
        probe_seed = 0x1F2E3D4C
        state = torch.Generator().manual_seed(probe_seed).get_state()
        raw = state.numpy()
        ok = (state.numel() == _STATE_BYTES and np.little_endian
              and int(raw[_LEFT:_LEFT + 4].view(np.int32)[0]) == 1
              and int(raw[_NEXT:_NEXT + 8].view(np.uint64)[0]) == 0
              and np.array_equal(raw[_WORDS:_WORDS + 8 * _MT_WORDS].view(np.uint64), _mt_init_words(probe_seed)))
        if not ok:
            raise RuntimeError(f"torch {torch.__version__}'s CPU random-generator state has a layout dpsynth does not "
                               "know, so it cannot seed the DP noise with full entropy on the CPU; install the torch "
                               "version dpsynth supports (see pyproject.toml) or train on CUDA")
        _cpu_template = state
    return _cpu_template


def check_cpu_generator() -> None:
    """Raise RuntimeError now if the CPU generator's state layout is unknown (a run checks this before it writes
    or pays for anything)."""
    _cpu_state_template()


def _mt_state(words: np.ndarray) -> torch.Tensor:
    """A CPU generator state holding the 624 given 32-bit words, about to twist them (left = 1, next = 0) and with
    no cached normal, so every output derives from `words` alone."""
    state = _cpu_state_template().clone()
    raw = state.numpy()
    raw[_WORDS:_WORDS + 8 * _MT_WORDS] = words.astype(np.uint64).view(np.uint8)
    raw[_LEFT:_LEFT + 4] = np.array([1], dtype=np.int32).view(np.uint8)
    raw[_NEXT:_NEXT + 8] = 0
    for flag in _CACHED_NORMAL_FLAGS:
        raw[flag] = 0
    return state


def _secure_words() -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype="<u4")


class NoiseSource:
    """Gaussian noise tensors from its own generator(s), never from torch's global RNG."""

    def __init__(self, seed: int | None = None, secure: bool = False) -> None:
        # A seed passed with secure=True is ignored (callers may pass the run seed either way).
        self.secure = bool(secure)
        self.seed_was_given = seed is not None and not secure
        self.seed = None if secure else (int(seed) if seed is not None else secrets.randbits(63))
        self._generators: dict[str, torch.Generator] = {}

    def _device_seed_sequence(self, device: torch.device) -> np.random.SeedSequence:
        """A distinct stream per device, derived from the run seed (same seed + device → same stream)."""
        assert self.seed is not None
        key = [abs(self.seed), int(self.seed < 0), sum(ord(c) << (8 * i) for i, c in enumerate(str(device)))]
        return np.random.SeedSequence(key)

    def _generator(self, device: torch.device) -> torch.Generator:
        name = str(device)
        gen = self._generators.get(name)
        if gen is None:
            gen = torch.Generator(device=device)
            if not self.secure:
                seq = self._device_seed_sequence(device)
                if device.type == "cpu":
                    gen.set_state(_mt_state(seq.generate_state(_MT_WORDS, dtype=np.uint32)))
                else:
                    gen.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0]))
            self._generators[name] = gen
        if self.secure:
            if device.type == "cpu":
                gen.set_state(_mt_state(_secure_words()))
            else:  # Philox: a 64-bit key and a counter offset (a multiple of 4, as torch requires)
                gen.manual_seed(secrets.randbits(64))
                gen.set_offset(secrets.randbits(60) * 4)
        return gen

    def normal_like(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """N(0, std²) noise, independent per element, with the shape, dtype and device of `tensor`.

        fp16/bf16 noise is drawn in fp32 and rounded once, so its distribution is not distorted by low precision.
        """
        if not std >= 0:
            raise ValueError(f"std must be ≥ 0, got {std}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"noise is for floating-point tensors, got {tensor.dtype}")
        dtype = torch.float32 if tensor.dtype in _LOW_PRECISION else tensor.dtype
        noise = torch.randn(tensor.shape, generator=self._generator(tensor.device), dtype=dtype,
                            device=tensor.device)
        noise.mul_(float(std))
        return noise.to(tensor.dtype)

    def add_normal_(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """Add N(0, std²) noise to every element of a float32 `tensor` in place, and return it.

        Why not `tensor.add_(normal_like(...))`: that allocates a second full-size tensor per weight matrix, and on
        the CPU touching fresh pages of a 100 MB buffer costs more than filling a small warm one; ≤ 16 MB at a time
        into one reused buffer is faster (bench/RESULTS.md) and needs no transient memory. The elements are still
        independent N(0, std²).
        """
        if not std >= 0:
            raise ValueError(f"std must be ≥ 0, got {std}")
        if tensor.dtype != torch.float32 or not tensor.is_contiguous():
            raise TypeError(f"add_normal_ needs a contiguous float32 tensor, got {tensor.dtype}")
        gen = self._generator(tensor.device)
        flat = tensor.view(-1)
        buf = torch.empty(min(flat.numel(), _CHUNK_ELEMENTS), dtype=torch.float32, device=tensor.device)
        for start in range(0, flat.numel(), buf.numel()):
            part = flat[start:start + buf.numel()]
            draw = buf[:part.numel()]
            draw.normal_(0.0, float(std), generator=gen)
            part.add_(draw)
        return tensor

    def describe(self) -> str:
        if self.secure:
            return "cryptographically seeded (OS randomness, re-seeded before every draw)"
        if self.seed_was_given:
            return f"seeded PRNG (seed {self.seed})"
        return f"seeded PRNG (random seed {self.seed})"

    def state_dict(self) -> dict[str, Any]:
        """Generator states for resume (seeded mode). A secure source has no state worth keeping."""
        if self.secure:
            return {"secure": True}
        return {"secure": False, "seed": self.seed,
                "generators": {name: g.get_state() for name, g in self._generators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("secure") or self.secure:
            if bool(state.get("secure")) != self.secure:
                raise ValueError("cannot resume a seeded noise source as a secure one or the other way round")
            return
        self.seed = int(state["seed"])
        self.seed_was_given = True
        self._generators = {}
        for name, gen_state in state["generators"].items():
            if name.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"this seeded run drew its noise on {name}; resume it where CUDA is available")
            gen = torch.Generator(device=torch.device(name))
            gen.set_state(gen_state)
            self._generators[name] = gen
