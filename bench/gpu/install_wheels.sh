#!/usr/bin/env bash
# Install the carried wheels (bench/gpu/fetch_wheels.sh) into a --target folder on the GPU machine, never over the
# image's own CUDA torch. Shared by run_all.sh's `setup` step and utility_gpu.sh, so both calls of the two-call
# real-model run install exactly the same way.
#
# Environment (run_all.sh exports these): PY (python3), WHL (.whl: the wheel folder), SITE (/tmp/dpsynth_site).
# On success it writes $SITE/.dpsynth_wheels (the installed wheel names), so a later call on the same (warm)
# machine can tell a complete install from a missing or half-finished one: see `wheels_installed` below.
# Usage: bash bench/gpu/install_wheels.sh            install (exit 1 if pip fails)
#        bash bench/gpu/install_wheels.sh --check    exit 0 iff $SITE holds a complete install of $WHL's wheels
set -uo pipefail
PY=${PY:-python3}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/dpsynth_site}
MARKER=$SITE/.dpsynth_wheels

wheel_list() { find "$WHL" -maxdepth 1 -name '*.whl' -printf '%f\n' 2>/dev/null | sort; }

if [ "${1:-}" = --check ]; then
  [ -f "$MARKER" ] && [ -n "$(wheel_list)" ] && [ "$(wheel_list)" = "$(cat "$MARKER")" ]
  exit
fi

mapfile -t names < <(wheel_list)
if ((${#names[@]} == 0)); then
  echo "WARNING: no wheels in $WHL (see bench/gpu/README.md): pydantic, dp-accounting and opacus will be missing"
  exit 0
fi
pip_target() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"
}
rm -f "$MARKER"
wheels=()
for n in "${names[@]}"; do
  case $n in typing_extensions-*) ;; *) wheels+=("$WHL/$n") ;; esac
done
pip_target "${wheels[@]}" || exit 1
# typing_extensions only when the image's copy is too old for pydantic (replacing it could break other packages).
if ! "$PY" -c 'import pydantic' 2>/dev/null && compgen -G "$WHL/typing_extensions-*.whl" >/dev/null; then
  echo "pydantic needs a newer typing_extensions than the image's: installing the carried one"
  pip_target "$WHL"/typing_extensions-*.whl || exit 1
fi
printf '%s\n' "${names[@]}" >"$MARKER"
echo "installed ${#names[@]} wheels from $WHL into $SITE"
