# Budgeted steps, shared (sourced) by bench/gpu/run_all.sh and bench/gpu/utility_gpu.sh.
#
# A device call has a hard limit, and a step that hangs must not eat the time of the steps after it: every step
# runs under `timeout`, its limit cut to what is left of the script's budget, and a step that would not get its
# minimum is skipped. The caller sets, before sourcing or before the first `step`:
#   LOG      file every line also goes to          BUDGET   seconds for the whole script (bash's SECONDS counts)
#   STEPS    ",a,b," names of the steps to run     SCALE    factor on every step's max/min (4 in CPU dry runs)
#   RESERVE  seconds kept back for the `summary` step (which may use them)
# and reads RESULTS (one table row per step), FAILED (1 once any step failed) and LAST_STATUS (the last step's
# ok / rc=N / TIMEOUT / skipped).
# shellcheck shell=bash disable=SC2034,SC2153 # globals shared with the sourcing script

# gpu_env OUT_PREFIX LOG_NAME [EXTRA_PYTHONPATH]: the environment both scripts start from. Needs ROOT, DRY, SITE.
# Sets OUT (a fresh /tmp folder unless given), LOG (emptied), SCALE, PY and DEV; on the GPU PYTHONPATH puts the
# carried wheels ($SITE), then EXTRA, then src/ first; a CPU dry run (DRY=1) adds the image emulation in front.
gpu_env() {
  local extra=${3:+$3:}
  if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d "/tmp/$1.XXXXXX"); fi
  mkdir -p "$OUT"
  LOG=$OUT/$2
  : >"$LOG"
  SCALE=${DPSYNTH_GPU_TIMEOUT_SCALE:-$([ "$DRY" = 1 ] && echo 4 || echo 1)}
  if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    DEV=cpu
    export DPSYNTH_GPU_EMULATE_IMAGE=${DPSYNTH_GPU_EMULATE_IMAGE:-1}
    export DPSYNTH_GPU_SITE=$SITE
    export PYTHONPATH=$ROOT/bench/gpu/emulate_image:$SITE:$extra$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
  else
    PY=${PYTHON:-python3}
    DEV=cuda
    export PYTHONPATH=$SITE:$extra$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
  fi
}

declare -a RESULTS=()
FAILED=0
LAST_STATUS=

log() { echo "$*" | tee -a "$LOG"; }

# step NAME MAX_S MIN_S CMD...: run CMD under `timeout` (MAX_S, cut to the budget left); skip it when fewer than
# MIN_S seconds are left; do nothing (LAST_STATUS=off) when NAME is not in $STEPS. CMD may name an exported function
# of the calling script (it then runs in a child bash, so `timeout` can kill it).
step() {
  local name=$1 max=$(($2 * SCALE)) min=$(($3 * SCALE))
  shift 3
  LAST_STATUS=off
  case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
  local reserve=$RESERVE
  [ "$name" = summary ] && reserve=0
  local left=$((BUDGET - SECONDS - reserve))
  if ((left < min)); then
    log "### $name: SKIPPED at ${SECONDS}s (${left}s of the budget left, needs >= ${min}s)"
    RESULTS+=("$(printf '%-16s %-8s %5s' "$name" skipped -)")
    LAST_STATUS=skipped
    return 0
  fi
  local t=$((max < left ? max : left))
  log ""
  log "### $name (timeout ${t}s, started at ${SECONDS}s): $*"
  local t0=$SECONDS
  if declare -F "$1" >/dev/null; then set -- bash -c "$1"; fi
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local status=ok
  if ((rc == 124 || rc == 137)); then status=TIMEOUT; elif ((rc != 0)); then status="rc=$rc"; fi
  [ "$status" = ok ] || FAILED=1
  LAST_STATUS=$status
  log "### $name: $status after $((SECONDS - t0))s"
  RESULTS+=("$(printf '%-16s %-8s %5s' "$name" "$status" $((SECONDS - t0)))")
}
