"""Benchmark of one DP training step: dpsynth's clipping engine against non-private training and Opacus 1.6.

Everything runs side by side in one invocation — same model (random weights from a config, no download), same batch,
sequence length and hardware — and reports the median wall time of `--steps` steps after `--warmup` warm-up steps
(forward, backward, clipping and noise where private, AdamW step, zero_grad), the median time of each phase
(forward / backward / noise / optimizer; Opacus adds its noise inside the optimizer step) and the peak memory.
On a shared machine, `--repeats R` runs all methods R times in interleaved rounds and keeps each one's best round.

Run (repository root):
    .venv/bin/python bench/train_step.py --model smollm2-shape --batch 8 --seq-len 64 --steps 3 --warmup 1
    python bench/train_step.py --device cuda --precision bf16 --model gpt2-small --batch 32 --steps 8 --warmup 3

Methods (per mode):
- nonprivate: mean loss, plain backward.            - dpsynth: ClippingEngine, noise once per logical step.
- opacus_hooks / opacus_ghost: PrivacyEngine.make_private(grad_sample_mode="hooks" | "ghost").
- *_frozen_emb (full mode only): token and position embeddings frozen (for a tied LM head that freezes the head too),
  the setting in which Opacus runs at all on these models — so dpsynth_frozen_emb vs opacus_* is like for like.
Modes: full (every weight trainable, embeddings included) and lora (peft LoRA r=8 on all attention and MLP projections).

A logical step is one micro-batch of `--batch` examples by default. Real DP training accumulates many micro-batches
into one logical step (the demo's N/8 batch is ≈30 micro-batches of 8) and draws the noise once per logical step;
`--accumulate K` times logical steps of K micro-batches (non-private: K backward passes, one optimizer step), the
setting users run. Opacus is not wired for accumulation here and is skipped when K > 1.

Memory figures:
- peak_mem_bytes: peak memory of weights + everything the training steps need (gradients, optimizer state,
  activations, per-example buffers). CUDA: torch.cuda.max_memory_allocated minus what was allocated before the model
  was built. CPU: peak RSS (VmHWM, reset after the model is built) minus the RSS before the model was built, each
  (mode, method) in a fresh child process so that freed-but-cached memory of an earlier method does not count.
- step_mem_bytes: the same peak minus the memory right after model and method set-up (weights, hooks, wrappers):
  what the training step itself adds.
- live_peak_bytes (CPU): peak_mem_bytes of a second fresh child (1 warm-up + 1 step) started with glibc told to
  give every block of ≥ 64 KiB its own mapping and return it on free (MALLOC_MMAP_THRESHOLD_=65536,
  MALLOC_TRIM_THRESHOLD_=0). Its RSS then follows the live tensors; with the default allocator, freed memory kept
  for reuse differs between methods by more than the effect measured (it hid 0.6 GB of activations the engine kept
  too long, and it makes accumulation look free). Timing stays in the first child: per-block mappings page-fault.
The memory ratios use memory_bytes: peak_mem_bytes on CUDA (max_memory_allocated: live tensors too), live_peak_bytes
on the CPU (peak_mem_bytes with `--no-live-memory`), like the published comparisons, which quote total peak GiB.
The default-allocator RSS ratios stay in the JSON as *_rss_memory_ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from bench._common import (
    fmt_bytes,
    machine_info,
    now_iso,
    package_versions,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    sync,
)
from torch import nn

MODELS = ("tiny", "smollm2-shape", "smollm2-360m-shape", "smollm2-1.7b-shape", "gpt2-small", "gpt2-medium")
MODES = ("full", "lora")
METHODS = ("nonprivate", "nonprivate_frozen_emb", "dpsynth", "dpsynth_frozen_emb", "opacus_hooks", "opacus_ghost")
FULL_ONLY = frozenset({"nonprivate_frozen_emb", "dpsynth_frozen_emb"})  # in lora mode embeddings are frozen anyway
RATIO_METHODS = ("dpsynth_frozen_emb", "opacus_hooks", "opacus_ghost")
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "train_step.json"


@dataclasses.dataclass
class BenchConfig:
    model: str = "smollm2-shape"
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 8
    seq_len: int = 128
    steps: int = 3
    warmup: int = 1
    modes: tuple[str, ...] = MODES
    methods: tuple[str, ...] = METHODS
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    lr: float = 1e-4
    lora_r: int = 8
    seed: int = 0
    isolate: str = "auto"  # auto: a child process per (mode, method) on CPU, in-process on CUDA
    child_timeout_s: float = 3600.0
    threads: int | None = None  # torch intra-op threads (None: torch's default); 1 is steadier on a shared CPU
    repeats: int = 1  # rounds over all (mode, method); the lowest median is kept (robust to a busy shared machine)
    accumulate: int = 1  # micro-batches per logical step (noise and optimizer step once per logical step)
    profile_dir: str | None = None
    live_memory: bool = True  # CPU, child processes: a second child per method measures live memory

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        self.methods = tuple(self.methods)
        bad = [m for m in self.modes if m not in MODES] + [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown mode/method {bad}; modes: {MODES}, methods: {METHODS}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be fp32 or bf16")
        if min(self.batch, self.seq_len, self.steps, self.repeats, self.accumulate) < 1 or self.warmup < 0:
            raise ValueError("batch, seq-len, steps, repeats and accumulate must be ≥ 1, warmup ≥ 0")
        if self.accumulate > 1:
            self.methods = tuple(m for m in self.methods if not m.startswith("opacus"))

    def use_subprocess(self) -> bool:
        if self.isolate == "auto":
            return not self.device.startswith("cuda")
        return self.isolate == "process"


# ---------------------------------------------------------------- models
def model_config(name: str) -> Any:
    from transformers import GPT2Config, LlamaConfig

    if name == "tiny":
        return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True)
    if name == "smollm2-shape":  # SmolLM2-135M's shape
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                           rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    if name == "smollm2-360m-shape":  # SmolLM2-360M's shape (361.8M weights): memory per model size
        return LlamaConfig(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                           num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=2048,
                           rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    if name == "smollm2-1.7b-shape":  # SmolLM2-1.7B's shape (1.71B weights)
        return LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                           rope_theta=130000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    if name == "gpt2-small":
        return GPT2Config()
    if name == "gpt2-medium":
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    raise ValueError(f"unknown model {name!r}: use one of {MODELS} or a local model folder")


def build_model(name: str, device: torch.device, seed: int) -> nn.Module:
    """A float32 causal LM on `device`: random weights from a named config, or a local folder's weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if Path(name).is_dir():
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(model_config(name))
    return model.float().train()


def freeze_embeddings(model: nn.Module) -> list[str]:
    """Freeze every nn.Embedding (token and learned position embeddings); with tied weights this freezes the LM
    head as well, exactly as Opacus users have to."""
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            for pname, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen.append(f"{name}.{pname}")
    return frozen


def apply_lora(model: nn.Module, r: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    model_type = getattr(model.config, "model_type", "")
    if model_type == "gpt2":
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, fan_in_fan_out=True,
                         target_modules=["c_attn", "c_proj", "c_fc"])
    elif model_type == "llama":
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    else:
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, cfg)


def vocab_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def make_batch(cfg: BenchConfig, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Full-length random sequences (no padding): every method sees exactly B·T tokens."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ids = torch.randint(0, vocab, (cfg.batch, cfg.seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": ids.clone().to(device)}


# ---------------------------------------------------------------- methods
class PerExampleLMCriterion(nn.Module):
    """The dpsynth loss in the shape Opacus' ghost-clipping wrapper expects: it flips `reduction` to "none" to get
    one loss per example, so with our per-example mean the privacy unit is the sequence, as in dpsynth."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from dpsynth.privacy.loss import per_example_lm_loss

        losses = per_example_lm_loss(logits, labels)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


class Laps:
    """Wall-clock phases of one step (forward / backward / noise / optimizer), each closed by a device sync so a
    phase is charged with its own queued work. The extra syncs cost microseconds against steps of milliseconds."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phases: dict[str, float] = {}
        self._t = 0.0

    def start(self) -> None:
        self.phases = {}
        sync(self.device)
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._t
        self._t = now

    @property
    def total(self) -> float:
        return sum(self.phases.values())


@dataclasses.dataclass
class Prepared:
    step: Callable[[Laps], None]
    params: list[nn.Parameter]  # the trained parameters (dpsynth sets requires_grad=False on them while attached)
    info: dict[str, Any]
    keep: list[Any]  # objects that must outlive the timing loop (engine, wrappers, optimizer)


def _autocast(cfg: BenchConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _adamw(params: list[nn.Parameter], cfg: BenchConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)


def prepare(cfg: BenchConfig, mode: str, method: str, device: torch.device) -> tuple[nn.Module, Prepared]:
    """Build the model for (mode, method) and return it with a closure that runs one full training step."""
    from dpsynth.privacy.loss import per_example_lm_loss

    model = build_model(cfg.model, device, cfg.seed)
    info: dict[str, Any] = {}
    if mode == "lora":
        model = apply_lora(model, cfg.lora_r)
    elif method.endswith("_frozen_emb") or method.startswith("opacus"):
        info["frozen"] = freeze_embeddings(model)
    params = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    batch = make_batch(cfg, vocab_size(model), device)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, t = ids.shape
    k = cfg.accumulate
    amp = _autocast(cfg, device)

    if method.startswith("nonprivate"):
        opt = _adamw(params, cfg)

        def step(laps: Laps) -> None:
            for _ in range(k):
                with amp:
                    loss = per_example_lm_loss(model(input_ids=ids, attention_mask=mask).logits, labels).mean() / k
                laps.lap("forward")
                loss.backward()
                laps.lap("backward")
            opt.step()
            opt.zero_grad(set_to_none=True)
            laps.lap("optimizer")

        return model, Prepared(step, params, info, [opt])

    if method.startswith("dpsynth"):
        from dpsynth.privacy.engine import ClippingEngine
        from dpsynth.privacy.noise import NoiseSource

        engine = ClippingEngine(model, cfg.clip_norm, seq_len_hint=t).attach()
        opt = _adamw(engine.params, cfg)
        noise = NoiseSource(seed=cfg.seed + 2)  # the product's noise path
        info["dpsynth_layers"] = dict(Counter(engine.describe().values()))

        def step(laps: Laps) -> None:
            for _ in range(k):
                with engine.microbatch(b, t), amp:
                    losses = per_example_lm_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
                laps.lap("forward")
                engine.backward(losses)
                laps.lap("backward")  # includes per-example norms and the clipped sum
            engine.noisy_average(noise, cfg.noise_multiplier, float(b * k))
            laps.lap("noise")
            opt.step()
            opt.zero_grad(set_to_none=True)
            laps.lap("optimizer")

        return model, Prepared(step, params, info, [engine, opt])

    # Opacus
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    ghost = method == "opacus_ghost"
    opt = _adamw(params, cfg)
    loader = DataLoader(TensorDataset(ids.cpu(), labels.cpu()), batch_size=b)  # only for the sample rate
    privacy = PrivacyEngine()
    made = privacy.make_private(
        module=model, optimizer=opt, data_loader=loader, criterion=PerExampleLMCriterion(),
        noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.clip_norm, poisson_sampling=False,
        grad_sample_mode="ghost" if ghost else "hooks",
        noise_generator=torch.Generator(device=device).manual_seed(cfg.seed + 2),
    )
    if ghost:
        gsm, dp_opt, criterion, _ = made

        def step(laps: Laps) -> None:
            with amp:
                logits = gsm(input_ids=ids, attention_mask=mask).logits
            loss = criterion(logits, labels)
            laps.lap("forward")
            loss.backward()  # two backward passes: norms, then the reweighted loss
            laps.lap("backward")
            dp_opt.step()  # noise + AdamW
            dp_opt.zero_grad(set_to_none=True)
            laps.lap("optimizer")
    else:
        gsm, dp_opt, _ = made

        def step(laps: Laps) -> None:
            with amp:
                loss = per_example_lm_loss(gsm(input_ids=ids, attention_mask=mask).logits, labels).mean()
            laps.lap("forward")
            loss.backward()  # per-example gradients materialised by the hooks
            laps.lap("backward")
            dp_opt.step()  # clip, sum, noise + AdamW
            dp_opt.zero_grad(set_to_none=True)
            laps.lap("optimizer")

    return model, Prepared(step, params, info, [privacy, gsm, dp_opt])


# ---------------------------------------------------------------- measurement
def _import_everything() -> None:
    """Import every library a method may need before the memory baseline, so imports never count as step memory."""
    import transformers  # noqa: F401

    import dpsynth.privacy.engine  # noqa: F401
    import dpsynth.privacy.loss  # noqa: F401

    for mod in ("peft", "opacus"):
        with contextlib.suppress(Exception):
            __import__(mod)


def _snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().reshape(-1)[:16].clone() for p in params]


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _profile_step(prep: Prepared, device: torch.device, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        prep.step(Laps(device))
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40)
                    + "\n\nby input shape:\n"
                    + prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=30))


def measure(cfg: BenchConfig, mode: str, method: str, *, fresh_process: bool = False) -> dict[str, Any]:
    """Time and measure one (mode, method) in this process. Raises on failure (callers record the error).

    Host-memory figures are only reported for a `fresh_process`: after other methods ran in the same process, freed
    memory kept by the allocator makes peak-RSS differences meaningless (they are kept apart, as *_unisolated).
    """
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda" and cfg.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True  # as in the published comparison: fp32 with TF32
        torch.backends.cudnn.allow_tf32 = True
    _import_everything()
    _cleanup(device)
    base_cpu = rss_bytes()
    base_gpu = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    model, prep = prepare(cfg, mode, method, device)
    before = _snapshot(prep.params)
    _cleanup(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        after_setup = torch.cuda.memory_allocated(device)
        hwm_reset = True
    else:
        after_setup = rss_bytes()
        hwm_reset = reset_peak_rss()

    times: list[float] = []
    phases: dict[str, list[float]] = {}
    laps = Laps(device)
    for i in range(cfg.warmup + cfg.steps):
        laps.start()
        prep.step(laps)
        if i >= cfg.warmup:
            times.append(laps.total)
            for k, v in laps.phases.items():
                phases.setdefault(k, []).append(v)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_mem, step_mem = peak - base_gpu, peak - after_setup
        extra = {"peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    else:
        peak = peak_rss_bytes()
        peak_mem = None if peak is None or base_cpu is None else peak - base_cpu
        step_mem = None if peak is None or after_setup is None else peak - after_setup
        extra = {"peak_rss_bytes": peak, "peak_reset_after_build": hwm_reset}
        if not fresh_process:
            extra.update(peak_mem_unisolated_bytes=peak_mem, step_mem_unisolated_bytes=step_mem)
            peak_mem = step_mem = None
    after = _snapshot(prep.params)
    updated = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) / max(len(before), 1)
    extra["memory_bytes"] = peak_mem  # on the CPU replaced by the live-memory child's figure (run_benchmark)
    extra["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")

    if cfg.profile_dir:
        path = Path(cfg.profile_dir) / f"profile_{mode}_{method}.txt"
        try:
            _profile_step(prep, device, path)
        except Exception as exc:  # noqa: BLE001 - a profiler problem must not cost the measurement
            path.write_text(f"profiling failed: {type(exc).__name__}: {exc}\n")

    median = statistics.median(times)
    result = {
        "time_s": median,
        "times_s": times,
        "phases_s": {k: statistics.median(v) for k, v in phases.items()},
        "tokens_per_s": cfg.batch * cfg.accumulate * cfg.seq_len / median,
        "peak_mem_bytes": peak_mem,
        "step_mem_bytes": step_mem,
        "updated_fraction": updated,
        "torch_threads": torch.get_num_threads(),
        **prep.info,
        **extra,
    }
    del prep, model
    _cleanup(device)
    return result


def measure_safely(cfg: BenchConfig, mode: str, method: str, *, fresh_process: bool = False) -> dict[str, Any]:
    """measure(), with any failure turned into an error entry instead of ending the benchmark."""
    try:
        return measure(cfg, mode, method, fresh_process=fresh_process)
    except Exception as exc:  # noqa: BLE001 - the benchmark records whatever a method fails with
        failed = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": traceback.format_exc()[-2000:]}
    _cleanup(torch.device(cfg.device))  # outside `except`: the traceback's frames (model, activations) are gone
    return failed


LIVE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure_in_child(cfg: BenchConfig, mode: str, method: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one (mode, method) in a fresh interpreter: the only way to get a clean peak RSS on the CPU. `env` adds
    environment variables (LIVE_MALLOC_ENV: RSS that follows live memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "single.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--single", f"{mode}:{method}",
               "--config-json", json.dumps(dataclasses.asdict(cfg)), "--single-out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.child_timeout_s,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {cfg.child_timeout_s:.0f} s"}
        if out.exists():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout or "")[-1500:]
        return {"error": f"child process exited with code {proc.returncode} (killed for memory?): {tail}"}


# ---------------------------------------------------------------- the whole benchmark
def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, key: str) -> float | None:
    if not num or not den or num.get(key) is None or not den.get(key):
        return None
    return float(num[key]) / float(den[key])


def summarise_mode(mode: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-mode entry: raw results plus the ratios against non-private training."""
    base = results.get("nonprivate")
    entry: dict[str, Any] = {
        "methods": results,
        "dp_time_ratio": _ratio(results.get("dpsynth"), base, "time_s"),
        "dp_memory_ratio": _ratio(results.get("dpsynth"), base, "memory_bytes"),
        "dp_rss_memory_ratio": _ratio(results.get("dpsynth"), base, "peak_mem_bytes"),
        "dp_step_memory_ratio": _ratio(results.get("dpsynth"), base, "step_mem_bytes"),
        "opacus_embeddings_frozen": mode == "full",
    }
    for m in RATIO_METHODS:
        entry[f"{m}_time_ratio"] = _ratio(results.get(m), base, "time_s")
        entry[f"{m}_memory_ratio"] = _ratio(results.get(m), base, "memory_bytes")
    frozen_base = results.get("nonprivate_frozen_emb")
    if mode == "full" and frozen_base:
        entry["like_for_like"] = {"baseline": "nonprivate_frozen_emb"}
        for m in RATIO_METHODS:
            entry["like_for_like"][f"{m}_time_ratio"] = _ratio(results.get(m), frozen_base, "time_s")
            entry["like_for_like"][f"{m}_memory_ratio"] = _ratio(results.get(m), frozen_base, "memory_bytes")
    return entry


def run_benchmark(cfg: BenchConfig, out: Path | None = None, *, progress: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Measure every (mode, method) of `cfg`, write the JSON to `out` (if given) and return it."""
    report: dict[str, Any] = {
        "benchmark": "train_step",
        "date": now_iso(),
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(cfg.device),
        "versions": package_versions(),
        "isolated_processes": cfg.use_subprocess(),
        "tf32": cfg.device.startswith("cuda") and cfg.precision == "fp32",
        "memory_metric": ("memory_bytes (used by every *_memory_ratio): CUDA max_memory_allocated above the "
                          "process before the model was built; CPU peak RSS of a child whose glibc maps and unmaps "
                          "every block >= 64 KiB (live_peak_bytes), or peak_mem_bytes. peak_mem_bytes: peak RSS (CPU, "
                          "VmHWM of a fresh child process) or CUDA peak above the process; step_mem_bytes: the same "
                          "peak above the memory right after model and method set-up"),
        "modes": {},
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rep in range(cfg.repeats):
        for mode in cfg.modes:
            for method in cfg.methods:
                if mode != "full" and method in FULL_ONLY:
                    continue
                tag = f"{mode}/{method}" + (f" (repeat {rep + 1}/{cfg.repeats})" if cfg.repeats > 1 else "")
                if progress:
                    progress(f"{tag} …")
                t0 = time.perf_counter()
                res = (measure_in_child(cfg, mode, method) if cfg.use_subprocess()
                       else measure_safely(cfg, mode, method))
                if cfg.use_subprocess() and cfg.live_memory and "error" not in res:
                    mem = measure_in_child(dataclasses.replace(cfg, steps=1, warmup=1), mode, method,
                                           env=LIVE_MALLOC_ENV)
                    res["live_peak_bytes"] = mem.get("peak_mem_bytes")
                    res["live_child_mmap_threshold"] = mem.get("malloc_mmap_threshold")
                    if res["live_peak_bytes"] is not None:
                        res["memory_bytes"] = res["live_peak_bytes"]
                res["wall_s"] = time.perf_counter() - t0
                runs.setdefault(mode, {}).setdefault(method, []).append(res)
                if progress:
                    done = (res["error"][:200] if "error" in res
                            else f"{res['time_s']:.3f} s/step, peak {fmt_bytes(res['peak_mem_bytes'])}")
                    progress(f"{tag}: {done}")
                report["modes"][mode] = summarise_mode(mode, {m: _best(r) for m, r in runs[mode].items()})
                if out is not None:  # keep partial results if the run is interrupted
                    _write(report, out)
    return report


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """With repeats, keep the run with the lowest median: on a shared machine other load only ever slows a run."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = dict(min(ok, key=lambda r: r["time_s"]))
    if len(runs) > 1:
        best["time_s_repeats"] = [r.get("time_s") for r in runs]
    return best


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def render_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = report["config"]
    m = report["machine"]
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    table = Table(title=f"train step: {cfg['model']}, batch {cfg['batch']} × {cfg['seq_len']} tokens, "
                        f"{cfg['precision']} on {hw}; median of {cfg['steps']} after {cfg['warmup']} warm-up"
                        + (f", best of {cfg['repeats']} rounds" if cfg.get("repeats", 1) > 1 else ""))
    for col in ("mode", "method", "s/step", "tokens/s", "× nonpriv", "peak mem", "× nonpriv", "peak RSS",
                "trainable", "fwd / bwd / noise / opt s"):
        table.add_column(col, justify="left" if col in ("mode", "method") else "right")
    for mode, entry in report["modes"].items():
        base = entry["methods"].get("nonprivate")
        for method, r in entry["methods"].items():
            if "error" in r:
                table.add_row(mode, method, f"[red]failed: {r['error'][:90]}[/red]", *[""] * 7)
                continue
            tr, mr = _ratio(r, base, "time_s"), _ratio(r, base, "memory_bytes")
            rss = r.get("peak_mem_bytes") if "peak_rss_bytes" in r else None
            table.add_row(mode, method, f"{r['time_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
                          "–" if tr is None else f"{tr:.2f}×", fmt_bytes(r.get("memory_bytes")),
                          "–" if mr is None else f"{mr:.2f}×", fmt_bytes(rss),
                          f"{r['trainable_params'] / 1e6:,.2f}M", _phase_text(r.get("phases_s", {})))
    Console(width=max(Console().width, 150)).print(table)


def _phase_text(phases: dict[str, float]) -> str:
    return " / ".join("–" if k not in phases else f"{phases[k]:.3g}" for k in ("forward", "backward", "noise",
                                                                               "optimizer"))


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-shape", help=f"one of {', '.join(MODELS)} or a local model folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isolate", default="auto", choices=["auto", "process", "inprocess"],
                   help="auto: one child process per (mode, method) on CPU (clean peak RSS), in-process on CUDA")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives steadier ratios on a busy shared CPU")
    p.add_argument("--accumulate", type=int, default=1,
                   help="micro-batches of --batch examples per logical step (noise and optimizer step once per "
                        "logical step, as in real training); Opacus is skipped when > 1")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds over all methods, interleaved; per method the round with the lowest median is kept")
    p.add_argument("--child-timeout", type=float, default=3600.0, help="seconds before a child run is abandoned")
    p.add_argument("--no-live-memory", dest="live_memory", action="store_false",
                   help="CPU: skip the second child per method that measures live memory (ratios then use RSS)")
    p.add_argument("--profile", action="store_true", help="also profile one extra step per method (text tables "
                                                          "next to --out)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--single", help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    p.add_argument("--single-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.single:  # child process: one (mode, method), result to a file
        cfg = BenchConfig(**json.loads(args.config_json))
        mode, method = args.single.split(":", 1)
        _write(measure_safely(cfg, mode, method, fresh_process=True), args.single_out)
        return 0
    cfg = BenchConfig(
        model=args.model, device=args.device, precision=args.precision, batch=args.batch, seq_len=args.seq_len,
        steps=args.steps, warmup=args.warmup, modes=_split(args.modes), methods=_split(args.methods),
        clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier, lora_r=args.lora_r, seed=args.seed,
        isolate=args.isolate, child_timeout_s=args.child_timeout, repeats=args.repeats, accumulate=args.accumulate,
        threads=args.threads,
        profile_dir=str(args.out.resolve().parent) if args.profile else None, live_memory=args.live_memory,
    )
    report = run_benchmark(cfg, args.out, progress=lambda s: print(s, flush=True))
    render_table(report)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
