"""Stage 4: the label mix sampling will prompt with — released (and paid for) once per run, before training, so
that a label setting that cannot work stops the run before hours of training, not after."""

from __future__ import annotations

from dpsynth.config import RunConfig
from dpsynth.data.control_codes import ControlCodes
from dpsynth.models.loading import LoadedModel
from dpsynth.privacy.labels import LabelDistribution, read_label_values, release_label_distribution
from dpsynth.privacy.ledger import PrivacyLedger
from dpsynth.privacy.plan import PrivacyPlan, label_generator
from dpsynth.runtime.ranks import DistContext
from dpsynth.sample.generate import check_fits_context, encode_prompts
from dpsynth.stages.data import PrivateData
from dpsynth.stages.folder import RunFolder
from dpsynth.stages.resume import paid_label_distribution


def build_labels(config: RunConfig, data: PrivateData, plan: PrivacyPlan, ledger: PrivacyLedger, folder: RunFolder,
                 ranks: DistContext) -> LabelDistribution | None:
    """The label distribution of the run (None without label columns). A resumed run that already paid for its
    histogram reads it back. Under torchrun every rank builds it; with --secure-rng the noise comes from rank 0's
    secret, so every rank draws the same histogram."""
    if not config.label_columns:
        return None
    cols = list(config.label_columns)
    declared = read_label_values(config.label_values, cols) if config.label_values is not None else None
    if plan.label_histogram is not None:
        paid = paid_label_distribution(folder, ledger, plan.label_histogram)
        if paid is not None:
            return paid
    return release_label_distribution(
        data.table, cols, plan, ledger, declared=declared,
        generator=lambda: label_generator(secure=config.secure_rng, seed=config.seed,
                                          shared_secret=ranks.shared_secret))


def check_sampling_fits(config: RunConfig, loaded: LoadedModel, labels: LabelDistribution | None) -> None:
    """Refuse, before training, a --max-new-tokens that would run past the model's positions after the longest
    prompt sampling will use. The prompts are those of the label distribution — published or declared, so the
    advised number reveals nothing private."""
    codes = ControlCodes(list(config.label_columns))
    prompts = [codes.prefix(c) for c in labels.combos] if labels is not None and config.label_columns else [""]
    longest = max(len(ids) for ids in encode_prompts(loaded.tokenizer, prompts))
    check_fits_context(loaded.model, longest, config.resolved_max_new_tokens())
