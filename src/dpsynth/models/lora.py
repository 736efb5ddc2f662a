"""LoRA adapters for DP fine-tuning, via peft.

Why LoRA for DP-SGD: the noise added per step scales with the number of trained parameters' dimension, and
per-example clipping must touch every trained weight; training ~1% of the weights (low-rank adapters on the
attention and MLP projections, embeddings frozen) keeps both the noise and the cost small.

Determinism: `lora_dropout` defaults to 0. Dropout does not harm the privacy guarantee, but it draws from the
global torch RNG on every forward pass, so two runs with the same seed only match if they also make exactly the
same forward calls. The adapters' A matrices are initialised from the global torch RNG too: seed it first.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from dpsynth.errors import DpsynthError

# Names of the per-block projections in common decoder families, for documentation and tests; the default
# targets are detected from the model itself (see `default_target_modules`), not taken from this list.
KNOWN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama-like
                     "c_attn", "c_proj", "c_fc")  # GPT-2
_BLOCK_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


def default_target_modules(model: nn.Module) -> list[str]:
    """Suffix names of every Linear (or GPT-2 Conv1D) projection inside the repeated transformer blocks.

    "Inside a block" means the module path has a numeric component (`model.layers.3.mlp.up_proj`,
    `transformer.h.0.attn.c_attn`); this leaves out the output head and anything outside the layer stack,
    without hard-coding one architecture's names.
    """
    names: list[str] = []
    for full_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and _BLOCK_INDEX.search(full_name):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    if not names:
        raise DpsynthError(f"found no linear projections inside the transformer blocks of {type(model).__name__} "
                           "to put LoRA adapters on; use --finetune full")
    return names


def check_target_modules(model: nn.Module, targets: list[str]) -> None:
    """Refuse target names that match no module: a typo must not silently train fewer modules than asked for.

    Called before anything is written (the pipeline checks right after loading the model), and again by apply_lora.
    """
    leaves = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise DpsynthError(f"the LoRA target module(s) {', '.join(missing)} do not exist in {type(model).__name__}; "
                           f"available projections: {', '.join(default_target_modules(model))}")


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: list[str] | None = None) -> Any:
    """Wrap `model` with LoRA adapters (rank `r`, scale `alpha / r`); afterwards only the adapters are trainable.

    Returns a `peft.PeftModel`. GPT-2 style Conv1D layers store weights transposed, which peft must be told
    (`fan_in_fan_out=True`); this is detected from the targeted modules.
    """
    if isinstance(model, PeftModel):
        raise ValueError("the model already has adapters; apply_lora expects a plain transformers model")
    if r < 1:
        raise DpsynthError(f"the LoRA rank must be at least 1, not {r}")
    targets = list(target_modules) if target_modules else default_target_modules(model)
    check_target_modules(model, targets)
    targeted = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in targeted)
    if fan_in_fan_out and not all(isinstance(m, Conv1D) for m in targeted):
        raise DpsynthError("the LoRA targets mix Conv1D and Linear layers, which one adapter config cannot "
                           "describe; choose target modules of one kind")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers API that warns it is deprecated: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    # peft freezes the base weights already; make the contract explicit and checkable.
    for name, param in peft_model.named_parameters():
        param.requires_grad = "lora_" in name
    return peft_model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs the optimizer and the clipping engine work on, in a stable order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def merge_and_save(model: Any, path: str | Path, tokenizer: Any = None) -> Path:
    """Fold the adapters into a copy of the base weights and save a plain Hugging Face folder (atomically).

    The caller's adapter model is left untouched (at the cost of one temporary copy of the weights). Tied
    input/output embeddings stay tied: LoRA never targets them, and transformers saves a tied pair once.
    """
    if not hasattr(model, "merge_and_unload"):
        raise ValueError("merge_and_save expects a peft model with LoRA adapters")
    path = Path(path)
    merged = copy.deepcopy(model).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad = True  # a plain model as from_pretrained would give it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
