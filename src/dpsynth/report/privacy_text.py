"""Turn a run's privacy ledger (`privacy.json`) into sentences a product manager can act on.

An (ε, δ) pair means little to most readers; "within a factor e^ε ≈ 55, except with probability 1e-6" and "per
record" vs "per user" is what decides whether a dataset can be shared. Non-private runs and missing ledgers get an
explicit warning, never silence.

Ledger format (written by the training pipeline):
    {"epsilon": 4.0, "delta": 1.1e-6, "unit": "record" | "user", "accountant": "pld",
     "mechanisms": [{"name": "dp-sgd", "noise_multiplier": σ, "sample_rate": q, "steps": T},
                    {"name": "gaussian", "noise_multiplier": σ, "purpose": "label histogram"}],
     "non_private": false, "num_units": N, "clip_norm": C, "notes": [...], ...}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpsynth.errors import DpsynthError


@dataclass(frozen=True)
class PrivacyStatement:
    """The ledger in words: a headline, the formal guarantee, details, and warnings (empty when all is fine)."""

    status: str  # "private", "non_private" or "unknown"
    headline: str
    guarantee: str
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        parts = [*(f"WARNING: {w}" for w in self.warnings), self.headline, self.guarantee, *self.details]
        return "\n".join(p for p in parts if p)


def fmt_prob(p: float) -> str:
    """1.1e-06 → '1.1e-6'; 0.05 → '0.05'."""
    if p == 0:
        return "0"
    text = f"{p:.3g}" if p >= 1e-3 else f"{p:.2g}"
    if "e" not in text:  # e.g. 0.00094 formats without an exponent
        return text
    mant, exp = text.split("e")
    return f"{mant}e{int(exp)}"


def fmt_factor(eps: float) -> str:
    """e^ε written so its size is obvious: 2.72, 55, 2,981, 4.9e+08."""
    if eps > 700:
        return "astronomically large"
    value = math.exp(eps)
    if value < 10:
        return f"{value:.2f}"
    if value < 1e6:
        return f"{value:,.0f}"
    return f"{value:.1e}"


def fmt_eps(eps: float) -> str:
    """ε to 3 significant digits, rounded UP (a guarantee must not be shown stronger than it is): 2.3247 → 2.33."""
    if eps <= 0 or not math.isfinite(eps):
        return f"{eps:g}"
    digits = 2 - math.floor(math.log10(eps))
    factor = 10.0 ** digits
    return f"{math.ceil(eps * factor - 1e-9) / factor:g}"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "+inf", "∞"):
            return math.inf
        try:
            return float(value)
        except ValueError:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _strength(eps: float) -> str:
    if eps <= 1:
        return "This is a strong guarantee (ε ≤ 1)."
    if eps <= 4:
        return ("This is a moderate guarantee, in the range used by published DP synthetic-text work (the "
                "reference recipe uses ε = 4).")
    if eps <= 10:
        return "This is a weak guarantee (ε between 4 and 10): the bound allows large changes in likelihood."
    return ("This is a very weak guarantee (ε above 10): formally it still bounds influence, but the factor is so "
            "large that it says little in practice.")


def _plural(unit: str) -> str:
    return "users" if unit == "user" else f"{unit}s"


def _describe_mechanism(mech: Mapping[str, Any], noun: str, unit: str, num_units: float | None,
                        clip_norm: float | None) -> str:
    name = str(mech.get("name", "mechanism"))
    key = name.lower().replace("_", "-")
    sigma = _number(mech.get("noise_multiplier"))
    if key in ("dp-sgd", "dpsgd", "dp-adam", "dp-sgd-lora"):
        q = _number(mech.get("sample_rate"))
        steps = mech.get("steps")
        per_step = f", about {q * num_units:,.0f} per step" if q and num_units else ""
        clip = f"{clip_norm:g}" if clip_norm else "C"
        parts = [f"The generator was fine-tuned with DP-SGD for {steps} steps."]
        if q is not None:
            parts.append(f"At each step every {unit} joined the batch independently with probability {q:.3g} "
                         f"(Poisson sampling{per_step}).")
        if sigma is not None:
            parts.append(f"Each {unit}'s gradient was clipped to norm {clip} and Gaussian noise with standard "
                         f"deviation {sigma:.3g} × {clip} was added to the batch sum (noise multiplier σ = "
                         f"{sigma:.3g}).")
        return " ".join(parts)
    if key == "gaussian":
        purpose = mech.get("purpose") or "a released statistic"
        extra = " so the label proportions used for sampling are covered by the same guarantee" if (
            "label" in str(purpose).lower()) else ""
        s = f" with noise multiplier σ = {sigma:.3g}" if sigma is not None else ""
        threshold = mech.get("threshold_delta")
        tail = (f" Its label values were read from the data, so only combinations whose noisy count cleared a "
                f"threshold were used; that costs δ = {float(threshold):.2g} of the total." if threshold else "")
        return f"The {purpose} was computed with the Gaussian mechanism{s}{extra}.{tail}"
    params = ", ".join(f"{k} = {v}" for k, v in mech.items() if k != "name")
    return f"Mechanism {name}" + (f": {params}." if params else ".")


def describe_privacy(ledger: Mapping[str, Any] | None, *, noun: str = "record") -> PrivacyStatement:
    """Plain-words statement for a ledger; `noun` names one record (e.g. "review") in the headline."""
    if ledger is None:
        return PrivacyStatement(
            status="unknown",
            headline="The privacy guarantee of this synthetic data is unknown: no privacy ledger was given.",
            guarantee="Pass the run folder (--run RUN_DIR, which holds privacy.json) to state the guarantee.",
            warnings=["Without a privacy ledger nothing is known about how much the synthetic data reveals about "
                      "the training records; treat it as sensitive as the training data."],
        )
    unit = str(ledger.get("unit") or "record").lower()
    eps = _number(ledger.get("epsilon"))
    delta = _number(ledger.get("delta"))
    num_units = _number(ledger.get("num_units"))
    clip_norm = _number(ledger.get("clip_norm"))
    accountant = ledger.get("accountant")
    non_private = bool(ledger.get("non_private")) or eps is None or math.isinf(eps)
    what = "any one user's records (all of them together) were" if unit == "user" else f"any one {noun} was"
    details: list[str] = []
    warnings: list[str] = []

    if non_private:
        warnings.append("This run was trained WITHOUT differential privacy (ε = ∞). The synthetic data may repeat "
                        "training records word for word and has no formal privacy guarantee; do not share it as if "
                        "it were private.")
        who_any = "any one user's records" if unit == "user" else f"any one {noun}"
        headline = (f"No privacy guarantee: the generator was fine-tuned without noise, so {who_any} can influence "
                    "the synthetic data without limit.")
        guarantee = "Guarantee: none (non-private run, ε = ∞)."
        if num_units:
            details.append(f"Training set: {num_units:,.0f} {_plural(unit)}.")
        details.extend(str(n) for n in ledger.get("notes") or [])
        return PrivacyStatement("non_private", headline, guarantee, details, warnings, None, None, unit)

    who = "user's" if unit == "user" else f"{noun}'s"
    except_p = f", except with probability {fmt_prob(delta)}" if delta else ""
    headline = (f"Each {who} influence is bounded: anything computed from this synthetic data is almost equally "
                f"likely (within a factor e^{fmt_eps(eps)} ≈ {fmt_factor(eps)}{except_p}) whether or not {what} "
                "in the training set.")
    acc = f", accounted with {str(accountant).upper() if len(str(accountant)) <= 4 else accountant}" if (
        accountant) else ""
    d_txt = f", δ = {fmt_prob(delta)}" if delta is not None else ""
    guarantee = f"Guarantee: (ε = {fmt_eps(eps)}{d_txt}) differential privacy per {unit}{acc}."
    details.append(_strength(eps))
    if ledger.get("interim"):
        warnings.append("This ledger was written during training, so the run may not have finished; its ε is an "
                        "upper bound for the updates applied so far.")
    if unit == "user":
        cap = ledger.get("records_per_user_cap") or ledger.get("max_records_per_user")
        details.append("The privacy unit is the user: the bound covers everything one user contributed"
                       + (f" (at most {cap} records per user were used)." if cap else "."))
    if delta is not None and num_units:
        if delta < 1 / num_units:
            details.append(f"δ = {fmt_prob(delta)} is below 1/N = {fmt_prob(1 / num_units)} (N = {num_units:,.0f} "
                           f"{_plural(unit)}), as it should be.")
        else:
            warnings.append(f"δ = {fmt_prob(delta)} is not below 1/N = {fmt_prob(1 / num_units)}: with probability "
                            "δ the guarantee may fail, which at this size could expose a whole record; use a "
                            "smaller δ.")
    if delta is None:
        warnings.append("The ledger gives no δ; the guarantee cannot be fully stated.")
    target = _number(ledger.get("epsilon_target"))
    if target is not None and eps > target * (1 + 1e-6):
        warnings.append(f"The spent ε = {eps:g} exceeds the target ε = {target:g}.")
    for mech in ledger.get("mechanisms") or []:
        if isinstance(mech, Mapping):
            details.append(_describe_mechanism(mech, noun, unit, num_units, clip_norm))
    if ledger.get("neighbouring"):
        details.append(f"Neighbouring datasets: {ledger['neighbouring']} {unit} (the standard add/remove notion).")
    if ledger.get("noise_rng") == "seeded":
        details.append("The noise came from a seeded pseudo-random generator: keep the seed secret, or train with a "
                       "secure generator (--secure-rng) before releasing data.")
    details.append("Everything computed from the synthetic data alone (training a model on it, sharing it) keeps "
                   "this guarantee; metrics in this report that also use real data do not.")
    details.extend(str(n) for n in ledger.get("notes") or [])
    return PrivacyStatement("private", headline, guarantee, details, warnings, eps, delta, unit)


def load_ledger(run_dir: str | Path) -> dict[str, Any] | None:
    """Read RUN_DIR/privacy.json (or a direct path to the file); None when the folder holds no ledger."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "privacy.json"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise DpsynthError(f"{path} is not a readable privacy ledger ({type(err).__name__}); re-run or fix the "
                           "file") from None
    if not isinstance(data, dict):
        raise DpsynthError(f"{path} is not a privacy ledger (expected a JSON object)")
    return data
