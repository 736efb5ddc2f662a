#!/usr/bin/env bash
# Download the wheels bench/gpu/run_all.sh installs on the GPU machine (which reaches no package registry).
# Run here, from the repository root:   bash bench/gpu/fetch_wheels.sh            (into .whl/, for Python 3.12)
# The folder must be ignored by git (add "/.whl/" to .git/info/exclude) and named in the run tool's `carry`.
# DEST and PYVER override the folder and the Python version (PYVER=3.11 fetches wheels for a local dry run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${DEST:-.whl}"
pyver="${PYVER:-3.12}"
py="${PYTHON:-python3}"
mkdir -p "$dest"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  plat+=(--platform "$p")
done
grep -v '^\s*#' "$here/wheels.txt" | grep -v '^\s*$' | \
  xargs "$py" -m pip download --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$dest"
ls -l "$dest"
du -sh "$dest"
