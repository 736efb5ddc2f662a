"""The data of `dpsynth audit`: a held-out split, canaries (made-up secrets) inserted into the rest, and the
per-user cap applied as training will apply it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpsynth.data.split import split_train_test
from dpsynth.data.users import cap_records_per_user
from dpsynth.errors import DpsynthError
from dpsynth.evaluate import audit_users as au
from dpsynth.evaluate import canaries as cn
from dpsynth.evaluate.audit_config import AuditConfig
from dpsynth.evaluate.canaries import REPETITIONS


def auto_repetitions(num_records: int, num_formats: int, per_setting: int = 1, max_share: float = 0.05,
                     choices: Sequence[int] = REPETITIONS, cap: int | None = None) -> list[int]:
    """The reference's 1, 10, 100 repetitions, dropping the largest while canaries would exceed `max_share` of N.

    Why: 5 formats × (1 + 10 + 100) = 555 canary records are 0.03 % of the reference's 1.9M Yelp reviews but a
    quarter of a 2,000-record table, where they would dominate training (and the utility of the synthetic data).
    At least the smallest count is always kept. With a per-user `cap` (user-level DP) a canary user contributes at
    most `cap` trained copies, so only those count.
    """
    reps = sorted(choices)
    while len(reps) > 1 and num_formats * per_setting * sum(min(r, cap or r) for r in reps) > max_share * num_records:
        reps.pop()
    return reps


def canary_control_prefix(codes: Any, table: pd.DataFrame, canary: Any, text_column: str,
                           label_columns: list[str]) -> tuple[str, dict[str, str]]:
    """The control codes most of the canary's copies were trained with (copies take labels from random records)."""
    if not label_columns:
        return "", {}
    rows = table.loc[table[text_column] == canary.text, label_columns]
    combo = Counter(tuple(str(v) for v in r) for r in rows.itertuples(index=False)).most_common(1)[0][0]
    labels = dict(zip(label_columns, combo))
    return codes.prefix(labels), labels


@dataclass
class AuditData:
    """The audit's deterministic data: split, canaries, the canaried training file, what training keeps of it."""

    train: pd.DataFrame  # the user's records used for training (before canaries)
    heldout: pd.DataFrame  # non-members: records, or whole users with --user-column
    canaries: list[Any]
    reps: list[int]
    canaried: pd.DataFrame  # train + canary copies, shuffled: OUT/data/train_with_canaries.csv
    trained: pd.DataFrame  # what `dpsynth run` trains on: `canaried` after the per-user cap
    copies: dict[str, int]  # canary id → copies training keeps
    user_ids: dict[str, str]  # canary id → its user id (empty without --user-column)
    members: pd.DataFrame  # MIA: records of the member records / users
    nonmembers: pd.DataFrame
    mia_units: int  # members (= non-members): records, or users
    dropped_by_cap: int  # the user's own records the per-user cap removes


def prepare_audit_data(cfg: AuditConfig, table: pd.DataFrame, warnings: list[str], notes: list[str]) -> AuditData:
    """Split, make and insert the canaries, apply the per-user cap as training will, and pick the MIA samples."""
    ucol, cap = cfg.user_column, cfg.max_records_per_user
    if ucol:
        users = int(table[ucol].nunique())
        if users < 4:
            raise DpsynthError(f"the table has {users} users; a user-level audit needs at least 4 (training and "
                               "held-out users)")
        n_hold = max(1, min(round(users * cfg.holdout_fraction), cfg.mia_max_records, users // 2))
        train, heldout = au.split_users(table, ucol, n_hold, cfg.seed)
        trained_own, _, dropped = cap_records_per_user(train, ucol, cap)
        base = len(trained_own)
    else:
        n = len(table)
        if n < 4:
            raise DpsynthError(f"the table has {n} usable records; an audit needs at least 4 (training and held-out)")
        n_hold = max(1, min(round(n * cfg.holdout_fraction), cfg.mia_max_records, n // 2))
        stratify = cfg.label_columns[0] if cfg.label_columns else None
        train, heldout = split_train_test(table, n_hold / n, seed=cfg.seed, stratify=stratify)
        base, dropped = len(train), 0

    reps = list(cfg.repetitions) if cfg.repetitions is not None else auto_repetitions(
        base, len(cfg.formats), cfg.canaries_per_setting, cfg.max_canary_share, cap=cap if ucol else None)
    cans = cn.make_canaries(cfg.formats, reps, per_setting=cfg.canaries_per_setting, seed=cfg.seed)
    columns = [cfg.text_column, *cfg.label_columns, *([ucol] if ucol else [])]
    canaried = cn.insert_canaries(train[columns], cans, cfg.text_column, label_columns=list(cfg.label_columns),
                                  seed=cfg.seed)
    user_ids: dict[str, str] = {}
    if ucol:
        user_ids = au.canary_user_ids(cans, table[ucol].unique().tolist())
        canaried = au.assign_canary_users(canaried, cans, cfg.text_column, ucol, user_ids)
        trained = cap_records_per_user(canaried, ucol, cap)[0]
        copies = au.copies_trained(trained, ucol, user_ids)
        members, nonmembers, m = au.mia_users(trained, heldout, ucol, cap, cfg.mia_max_records, cfg.seed,
                                              exclude=list(user_ids.values()))
    else:
        trained, copies = canaried, {c.canary_id: c.repetitions for c in cans}
        rng = np.random.default_rng([cfg.seed, 5])
        m = min(len(heldout), len(train), cfg.mia_max_records)
        members = train.iloc[np.sort(rng.choice(len(train), size=m, replace=False))]
        nonmembers = heldout.iloc[np.sort(rng.choice(len(heldout), size=m, replace=False))]

    trained_canaries = sum(copies.values())
    share = trained_canaries / len(trained)
    if cfg.repetitions is None and sorted(reps) != sorted(REPETITIONS):
        warnings.append(f"With {base:,} training records only {', '.join(map(str, reps))} repetition(s) were "
                        f"used so that canaries stay within {cfg.max_canary_share:.0%} of the data; pass "
                        "--repetitions 1,10,100 to force the reference's setting.")
    if share > cfg.max_canary_share:
        warnings.append(f"Canaries are {share:.1%} of the training records: they shape training far more than in "
                        "the reference (0.03 %)" + ("." if ucol else ", and at ε < ∞ a secret repeated many times "
                                                    "is protected only as a group of that many records."))
    if ucol:
        kept = ", ".join(f"×{r}: {min(copies[c.canary_id] for c in cans if c.repetitions == r)}"
                         for r in sorted(set(reps)))
        notes.append(f"Privacy unit: the user ('{ucol}'). Each canary is one new user who writes its secret 1 to "
                     f"{max(reps)} times; training keeps at most --max-records-per-user {cap} records per user, so "
                     f"the copies trained per canary are {kept}. However often a user repeats a secret, it is "
                     "protected as one user: a canary user ranking near 1 at small ε would be a bug.")
        notes.append(f"Membership inference is user-level: whole users were held out, and each user is scored by "
                     f"the mean training loss of their records (at most {cap}); {m} member users against {m} "
                     "held-out users.")
    return AuditData(train=train, heldout=heldout, canaries=cans, reps=reps, canaried=canaried, trained=trained,
                      copies=copies, user_ids=user_ids, members=members, nonmembers=nonmembers, mia_units=m,
                      dropped_by_cap=dropped)
