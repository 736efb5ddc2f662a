"""Stage 3: the privacy plan of the run, from its public settings and N, and its ledger (spending carried over
on --resume)."""

from __future__ import annotations

from dpsynth.config import RunConfig
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.plan import PlanRequest, PrivacyPlan, plan_privacy
from dpsynth.stages.data import PrivateData
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.resume import carry_over_spending


def plan_run(config: RunConfig, data: PrivateData) -> PrivacyPlan:
    """Fix q, T and every noise level (refuses an unreachable (ε, δ) before anything is written)."""
    n = data.num_units
    return plan_privacy(PlanRequest(
        epsilon=config.epsilon, delta=config.delta, num_units=n, unit=data.unit_name,
        expected_batch_size=config.resolved_batch_size(n), epochs=config.resolved_epochs(),
        clip_norm=config.clip_norm, max_tokens=config.max_tokens, has_labels=bool(config.label_columns),
        label_values_declared=config.label_values is not None, label_distribution=str(config.label_distribution),
        label_budget_fraction=config.label_budget_fraction, secure_rng=config.secure_rng,
        records_per_user_cap=config.max_records_per_user if data.units is not None else None,
        user_column=config.user_column))


def open_ledger(plan: PrivacyPlan, folder: RunFolder, *, resume: bool) -> PrivacyLedger:
    """The run's ledger: empty for a new run; on --resume, what the interrupted run already spent."""
    ledger = plan.new_ledger()
    if resume and plan.private:
        carry_over_spending(folder, ledger)
    return ledger
