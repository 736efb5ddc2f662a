"""Users as privacy units: at most a fixed number of records per user, grouped for clipping together."""

from __future__ import annotations

import pandas as pd


def cap_records_per_user(table: pd.DataFrame, user_column: str, cap: int) -> tuple[pd.DataFrame, list[list[int]], int]:
    """Keep each user's first `cap` records (a choice made within each user's own data, so it is a per-unit
    transformation DP allows) and list every user's row indices; returns (table, units, rows dropped)."""
    keep = table.groupby(user_column, sort=False).cumcount() < cap
    kept = table[keep].reset_index(drop=True)
    units = [list(idx) for idx in kept.groupby(user_column, sort=False).indices.values()]
    return kept, units, int((~keep).sum())
