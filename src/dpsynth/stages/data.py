"""Stage 1: the private table — read once, checked, cleaned, and grouped into privacy units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from dpsynth.config import RunConfig
from dpsynth.data.reader import read_table_with_sha256
from dpsynth.data.schema import DatasetSpec, validate_table
from dpsynth.data.users import cap_records_per_user


@dataclass
class PrivateData:
    """The validated private table and what DP-SGD treats as one unit (a record, or all of one user's records)."""

    table: pd.DataFrame
    sha256: str  # of the file's bytes: a resume must read the same records
    report: dict[str, Any]  # exact statistics for data_report.json (private, never released)
    units: list[list[int]] | None = None  # user-level DP: the record indices of each user (≤ the cap)

    @property
    def num_units(self) -> int:
        return len(self.units) if self.units is not None else len(self.table)

    @property
    def unit_name(self) -> str:
        return "user" if self.units is not None else "record"


def load_private_data(config: RunConfig) -> PrivateData:
    """Read the file once (its digest is of the very bytes parsed), validate the columns, cap records per user."""
    df, sha256 = read_table_with_sha256(config.data)
    spec = DatasetSpec(text_column=config.text_column, label_columns=list(config.label_columns),
                       user_column=config.user_column)
    validated = validate_table(df, spec, max_label_values=config.max_label_values, drop_empty=config.drop_empty)
    table, report = validated.df, validated.report.to_dict()
    units = None
    if config.user_column:
        table, units, capped = cap_records_per_user(table, config.user_column, config.max_records_per_user)
        report |= {"num_users": len(units), "records_per_user_cap": config.max_records_per_user,
                   "records_dropped_by_cap": capped}
    return PrivateData(table=table, sha256=sha256, report=report, units=units)
