"""User-level pieces of `dpsynth audit` (`--user-column`): canary users, user hold-out, user-level membership.

With a user column, DP protects all of one user's records at once, and training keeps at most
`--max-records-per-user` of them (`dpsynth.stages.cap_records_per_user`). The audit then asks the question that
guarantee answers: every canary is a *new user* who writes the secret 1, 10 or 100 times, so the 100-repetition
canary is one user repeating a secret, not 100 people. Membership inference likewise holds out whole users and
attacks users, not records: the guarantee is about whether a user took part, and all of a user's records together
carry more signal than any one of them, so that is the attack the guarantee has to withstand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpsynth.data.control_codes import normalise_value


def canary_user_ids(canaries: Sequence[Any], existing: Sequence[str]) -> dict[str, str]:
    """A fresh user id per canary, `canary-<canary id>`, suffixed until it collides with no user in the data."""
    taken = {normalise_value(u) for u in existing}
    out: dict[str, str] = {}
    for canary in canaries:
        base = f"canary-{canary.canary_id}"
        uid, k = base, 2
        while uid in taken:
            uid, k = f"{base}-{k}", k + 1
        taken.add(uid)
        out[canary.canary_id] = uid
    return out


def assign_canary_users(canaried: pd.DataFrame, canaries: Sequence[Any], text_column: str, user_column: str,
                        user_ids: dict[str, str]) -> pd.DataFrame:
    """Give every inserted copy of a canary its canary's user id.

    `insert_canaries` leaves the user column of inserted rows empty; real rows always have a user id (the
    table was validated), so the empty rows are exactly the canary copies, recognised by their text.
    """
    by_text = {c.text: user_ids[c.canary_id] for c in canaries}
    out = canaried.copy()
    missing = out[user_column].isna()
    out.loc[missing, user_column] = out.loc[missing, text_column].map(by_text)
    if out[user_column].isna().any():
        raise RuntimeError("an inserted row matched no canary text")
    return out


def split_users(table: pd.DataFrame, user_column: str, num_heldout_users: int,
                seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out): whole users, chosen at random; both keep the table's row order and a fresh index."""
    users = sorted(table[user_column].unique().tolist())
    rng = np.random.default_rng([seed, 7])
    held = {users[i] for i in rng.permutation(len(users))[:num_heldout_users]}
    is_held = table[user_column].isin(held).to_numpy()
    return table[~is_held].reset_index(drop=True), table[is_held].reset_index(drop=True)


def copies_trained(capped: pd.DataFrame, user_column: str, user_ids: dict[str, str]) -> dict[str, int]:
    """How many copies of each canary survive the per-user cap (what training actually sees)."""
    counts = capped[user_column].value_counts()
    return {cid: int(counts.get(uid, 0)) for cid, uid in user_ids.items()}


def mia_users(capped_train: pd.DataFrame, heldout: pd.DataFrame, user_column: str, cap: int, max_users: int,
              seed: int, exclude: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Records of m member users (as trained: after the cap) and m held-out users (their first `cap` records,
    as training would have kept them); m = min(users on either side, `max_users`). Canary users are excluded."""
    members_all = sorted(set(capped_train[user_column].unique().tolist()) - set(exclude))
    held_all = sorted(heldout[user_column].unique().tolist())
    m = min(len(members_all), len(held_all), max_users)
    rng = np.random.default_rng([seed, 5])
    members = {members_all[i] for i in rng.choice(len(members_all), size=m, replace=False)}
    nonmembers = {held_all[i] for i in rng.choice(len(held_all), size=m, replace=False)}
    held_capped = heldout[heldout.groupby(user_column, sort=False).cumcount() < cap]
    return (capped_train[capped_train[user_column].isin(members)].reset_index(drop=True),
            held_capped[held_capped[user_column].isin(nonmembers)].reset_index(drop=True), m)


def user_scores(frame: pd.DataFrame, losses: np.ndarray, user_column: str) -> np.ndarray:
    """Each user's mean record loss (records with no scored token skipped): the user-level loss attack's score."""
    df = pd.DataFrame({"user": frame[user_column].to_numpy(), "loss": losses})
    df = df[np.isfinite(df["loss"])]
    return df.groupby("user", sort=True)["loss"].mean().to_numpy()
