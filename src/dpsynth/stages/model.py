"""Stage 2: the model — loaded, refused early when it cannot work, its adapters put on, its training records
encoded, and (after training) saved."""

from __future__ import annotations

import shutil

import torch

from dpsynth.config import RunConfig
from dpsynth.data.control_codes import ControlCodes
from dpsynth.data.encode import EncodedRecords, encode_records
from dpsynth.errors import DpsynthError, first_line
from dpsynth.models.loading import LoadedModel, context_length, load_model
from dpsynth.models.lora import apply_lora, check_target_modules
from dpsynth.privacy.noise import check_cpu_generator
from dpsynth.privacy.preflight import check_clippable
from dpsynth.runtime.files import replace_dir_atomic, write_json_atomic
from dpsynth.runtime.progress import quiet_transformers
from dpsynth.stages.data import PrivateData
from dpsynth.stages.folder import RunFolder


def load_base_model(config: RunConfig, device: torch.device) -> LoadedModel:
    """The base model to fine-tune; refuses a LoRA adapter, a --max-tokens past its positions and unknown LoRA
    targets before anything is written."""
    loaded = load_model(config.model, device=str(device))
    if hasattr(loaded.model, "peft_config"):  # a LoRA adapter folder, e.g. an earlier run's model/
        raise DpsynthError(f"--model {config.model} is a LoRA adapter (an earlier run's model/?), not a base model; "
                           "train from the base model it names, or use `dpsynth sample --run` to sample from that "
                           "run (training it again on the same data would spend privacy this run's ledger does not "
                           "count)")
    context = context_length(loaded.model)
    if context is not None and config.max_tokens > context:
        raise DpsynthError(f"--max-tokens {config.max_tokens} is longer than the {context} positions "
                           f"{loaded.name} was built for; use --max-tokens {context} or less")
    if config.finetune == "lora" and config.lora_targets:
        check_target_modules(loaded.model, list(config.lora_targets))
    return loaded


def encode_training_records(config: RunConfig, data: PrivateData, loaded: LoadedModel) -> EncodedRecords:
    """Control codes + text + EOS of every record, tokenised to --max-tokens (prefix and text separately, so the
    prefix tokens are exactly the sampling prompts)."""
    cols = list(config.label_columns)
    codes = ControlCodes(cols)
    prefixes = [codes.prefix(row) for row in data.table[cols].to_dict("records")] if cols else [""] * len(data.table)
    records = encode_records(loaded.tokenizer, prefixes, data.table[config.text_column].tolist(),
                             max_tokens=config.max_tokens, loss_on_prefix=config.loss_on_prefix)
    data.report |= records.summary()
    return records


def prepare_for_training(config: RunConfig, loaded: LoadedModel, device: torch.device) -> None:
    """LoRA adapters on (seeded) and the model on the device; with DP, the engine's pre-flight check that it can
    clip every trained layer — before the run writes anything or pays for its label histogram."""
    torch.manual_seed(config.seed)
    if config.finetune == "lora":
        try:
            loaded.model = apply_lora(loaded.model, r=config.lora_rank, alpha=config.lora_alpha,
                                      target_modules=config.lora_targets or None)
        except (ValueError, TypeError, RuntimeError) as exc:  # peft refusing a module (e.g. a norm, a router)
            raise DpsynthError(f"peft could not put LoRA adapters on {type(loaded.model).__name__} "
                               f"({first_line(exc)}); name the projections to adapt with --lora-targets, or use "
                               "--finetune full") from exc
    loaded.model = loaded.model.to(device)
    if config.private:
        check_clippable(loaded.model, device)
        if device.type == "cpu":
            try:
                check_cpu_generator()
            except RuntimeError as exc:
                raise DpsynthError(str(exc)) from None


def save_model(config: RunConfig, loaded: LoadedModel, folder: RunFolder) -> None:
    """The adapter (LoRA) or the full model, with its tokenizer, written to a staging folder, then swapped in."""
    staging = folder.model.with_name(folder.model.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    with quiet_transformers():  # transformers' "Writing model shards" bar would cut through the run's display
        loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    write_json_atomic(staging / "dpsynth_model.json", {"base_model": config.model or "default",
                                                      "finetune": config.finetune})
    replace_dir_atomic(staging, folder.model)
