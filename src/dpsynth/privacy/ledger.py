"""The privacy ledger: `privacy.json`, the record of every mechanism a run applied to the private data.

The core fields are fixed so that anyone can recompute ε with another library, from the file alone:

    {"epsilon": 3.99, "delta": 3.6e-08, "unit": "record", "accountant": "PLD (dp-accounting 0.6.0)",
     "mechanisms": [{"name": "dp-sgd", "noise_multiplier": σ, "sample_rate": q, "steps": T},
                    {"name": "gaussian", "noise_multiplier": std / L2 sensitivity, "purpose": "label histogram"}]}

Mechanisms compose under add/remove-one neighbouring of one privacy `unit`; dp-sgd is a Poisson-subsampled
Gaussian self-composed `steps` times. Extra fields: "neighbouring", "pld_value_discretization" (the PLD grid that
produced "epsilon", to reproduce it to the last digit), "num_units", "clip_norm", "noise_rng", "epsilon_target",
"records_per_user_cap", "non_private", "interim", "notes" (declared public choices), "format_version".

A non-private run (ε = ∞, or any mechanism without noise) writes `"epsilon": null` and `"non_private": true`:
null because JSON has no infinity, and a string such as "inf" would break readers that expect a number where a
number is given; null unambiguously means "no finite guarantee". δ is null there too.

`steps` counts every noisy update that was applied, including any lost in a crash: the trainer calls
`set_dpsgd_steps(t)` and writes the ledger *before* update t is applied.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from dpsynth.errors import DpsynthError
from dpsynth.privacy.accounting import (
    SEARCH_COARSENING,
    DpSgdMechanism,
    Mechanism,
    compute_epsilon_with_interval,
    mechanism_from_dict,
    refined_interval,
)
from dpsynth.runtime.files import write_json_atomic

FORMAT_VERSION = 1
UNITS = ("record", "user")
NEIGHBOURING = "add/remove one"


def accountant_name() -> str:
    try:
        version = metadata.version("dp-accounting")
    except metadata.PackageNotFoundError:  # pragma: no cover - it is a hard dependency
        version = "unknown"
    return f"PLD (dp-accounting {version})"


class PrivacyLedger:
    """Every mechanism applied to the private data, and the (ε, δ) of their composition (recomputed, not stored)."""

    def __init__(
        self,
        delta: float | None,
        unit: str = "record",
        num_units: int | None = None,
        *,
        clip_norm: float | None = None,
        epsilon_target: float | None = None,
        noise_rng: str | None = None,
        records_per_user_cap: int | None = None,
        non_private: bool = False,
        notes: list[str] | None = None,
        mechanisms: list[Mechanism] | None = None,
    ) -> None:
        if unit not in UNITS:
            raise DpsynthError(f"the privacy unit must be one of {list(UNITS)}, got {unit!r}")
        if delta is not None and not 0 < delta < 1:
            raise DpsynthError(f"δ must be in (0, 1), got {delta}")
        if delta is None and not non_private:
            raise DpsynthError("a private run's ledger needs a δ")
        self.delta = None if delta is None else float(delta)
        self.unit = unit
        self.num_units = num_units
        self.clip_norm = clip_norm
        self.epsilon_target = epsilon_target
        self.noise_rng = noise_rng
        self.records_per_user_cap = records_per_user_cap
        self.declared_non_private = bool(non_private)
        self.notes: list[str] = list(notes) if notes is not None else []
        self.mechanisms: list[Mechanism] = list(mechanisms) if mechanisms is not None else []
        self._cache: tuple[tuple, float, float] | None = None  # (state key, ε, PLD grid)

    # ------------------------------------------------------------------ recording
    def add(self, mechanism: Mechanism) -> None:
        """Record a mechanism (at most one dp-sgd: its steps are updated in place by `set_dpsgd_steps`)."""
        if isinstance(mechanism, DpSgdMechanism) and any(isinstance(m, DpSgdMechanism) for m in self.mechanisms):
            raise ValueError("the ledger already has a dp-sgd mechanism; update it with set_dpsgd_steps")
        self.mechanisms.append(mechanism)

    def set_dpsgd_steps(self, steps: int) -> None:
        """Set how many noisy DP-SGD updates have been applied (or are about to be). Never decreases."""
        idx = [i for i, m in enumerate(self.mechanisms) if isinstance(m, DpSgdMechanism)]
        if not idx:
            raise ValueError("the ledger has no dp-sgd mechanism to update; add one first")
        current = self.mechanisms[idx[0]]
        assert isinstance(current, DpSgdMechanism)
        if steps < current.steps:
            raise ValueError(f"spent steps cannot go down ({current.steps} → {steps}): every applied update counts")
        self.mechanisms[idx[0]] = dataclasses.replace(current, steps=int(steps))

    @property
    def dpsgd_steps(self) -> int:
        return sum(m.steps for m in self.mechanisms if isinstance(m, DpSgdMechanism))

    # ------------------------------------------------------------------ accounting
    def _state(self) -> tuple:
        return (self.delta, tuple(self.mechanisms))

    def _account(self) -> tuple[float, float | None]:
        """(ε, PLD grid) of the composition, memoised for the current mechanisms."""
        if self.delta is None:
            return math.inf, None
        key = self._state()
        if self._cache is None or self._cache[0] != key:
            eps, grid = compute_epsilon_with_interval(self.mechanisms, self.delta)
            self._cache = (key, eps, grid)
        return self._cache[1], self._cache[2]

    @property
    def epsilon(self) -> float:
        """ε of everything recorded so far (math.inf for a non-private run)."""
        if self.declared_non_private:
            return math.inf
        return self._account()[0]

    @property
    def non_private(self) -> bool:
        return self.declared_non_private or math.isinf(self.epsilon)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self, *, interim: bool = False) -> dict[str, Any]:
        """The ledger as JSON-ready data.

        `interim=True` is for the write before every training step: ε is then computed on a 10× coarser PLD grid
        (several times faster). That value is still a valid upper bound (the grid rounds
        pessimistically), is reproducible from the recorded grid, and is replaced by the tight one at the final
        write.
        """
        eps: float | None
        grid: float | None
        if self.declared_non_private or self.delta is None:
            eps, grid = math.inf, None
        elif interim:
            grid = SEARCH_COARSENING * refined_interval(self.epsilon_target if self.epsilon_target else 1.0)
            eps, grid = compute_epsilon_with_interval(self.mechanisms, self.delta, grid)
        else:
            eps, grid = self._account()
        non_private = self.declared_non_private or math.isinf(eps)
        d: dict[str, Any] = {
            "epsilon": None if non_private else eps,
            "delta": None if self.declared_non_private else self.delta,
            "unit": self.unit,
            "accountant": accountant_name(),
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "neighbouring": NEIGHBOURING,
            "pld_value_discretization": grid,
            "non_private": non_private,
            "interim": bool(interim and not non_private),
            "num_units": self.num_units,
            "clip_norm": self.clip_norm,
            "epsilon_target": self.epsilon_target,
            "noise_rng": self.noise_rng,
            "records_per_user_cap": self.records_per_user_cap,
            "notes": list(self.notes),
            "format_version": FORMAT_VERSION,
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrivacyLedger:
        try:
            mechanisms = [mechanism_from_dict(m) for m in d.get("mechanisms", [])]
            return cls(
                d.get("delta"), d.get("unit", "record"), d.get("num_units"),
                clip_norm=d.get("clip_norm"), epsilon_target=d.get("epsilon_target"), noise_rng=d.get("noise_rng"),
                records_per_user_cap=d.get("records_per_user_cap"),
                non_private=bool(d.get("non_private")) and d.get("delta") is None,
                notes=list(d.get("notes", [])), mechanisms=mechanisms,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DpsynthError(f"the privacy ledger is malformed ({type(err).__name__}: {err})") from None

    def write(self, path: str | os.PathLike[str], *, interim: bool = False) -> Path:
        """Write the ledger as JSON atomically (temporary file in the same folder, fsync, os.replace)."""
        return write_json_atomic(path, self.to_dict(interim=interim), allow_nan=False, default=None)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DpsynthError(f"no privacy ledger at {path}; is this a dpsynth output folder?") from None
        except json.JSONDecodeError as err:
            raise DpsynthError(f"the privacy ledger {path} is not valid JSON (line {err.lineno})") from None
        if not isinstance(data, dict):
            raise DpsynthError(f"the privacy ledger {path} is not a JSON object")
        return cls.from_dict(data)
