#!/usr/bin/env bash
# Builds the reset-report-py bundle: OUT_DIR/plugin.yaml and OUT_DIR/<spec.module>.
# Usage: bash plugins/reset-report-py/build.sh OUT_DIR
# Installs componentize-py (pinned) into .cache/ beside this script when it is missing, then
# builds the component from src/ against ../../wit, world `reset-report` (wit/world.wit), with WASI stubbed out.
# Environment: PYTHON (default python3), SONDE_WIT_DIR (default ../../wit from this folder).
set -euo pipefail

NAME=reset-report-py
COMPONENTIZE_PY_VERSION=0.25.1

fail() { echo "$NAME build: $*" >&2; exit 1; }

[ $# -eq 1 ] && [ -n "$1" ] || fail "usage: build.sh OUT_DIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
wit=${SONDE_WIT_DIR:-$here/../../wit}
python=${PYTHON:-python3}
cache=$here/.cache
lib=$cache/componentize-py-$COMPONENTIZE_PY_VERSION

command -v "$python" >/dev/null 2>&1 || fail "$python not found (needs Python >= 3.10 with pip)"
[ -f "$wit/plugin.wit" ] || fail "no WIT package at $wit (expected plugin.wit)"
wit=$(cd "$wit" && pwd)
module=$(sed -n 's/^[[:space:]]*module:[[:space:]]*\([^[:space:]#]*\).*$/\1/p' "$here/plugin.yaml" | head -n1)
[ -n "$module" ] || fail "plugin.yaml names no spec.module"

mkdir -p "$cache"
# One build at a time per plugin folder (the toolchain install is shared).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/lock"
    flock 9
fi
if [ ! -f "$lib/.complete" ]; then
    rm -rf "$lib" "$lib.tmp"
    if ! "$python" -m pip install --disable-pip-version-check --no-input --root-user-action=ignore \
            --quiet --target "$lib.tmp" "componentize-py==$COMPONENTIZE_PY_VERSION" \
            >"$cache/pip.log" 2>&1; then
        fail "pip install componentize-py==$COMPONENTIZE_PY_VERSION failed: $(grep -m1 -i 'error' "$cache/pip.log" || tail -n1 "$cache/pip.log") (log: $cache/pip.log)"
    fi
    touch "$lib.tmp/.complete"
    mv "$lib.tmp" "$lib"
fi

# The plugin's own world (wit/world.wit) with the sonde:plugin package as its dependency, as
# any plugin outside this repository lays it out.
rm -rf "$cache/wit"
mkdir -p "$cache/wit/deps/sonde-plugin"
cp "$here/wit/world.wit" "$cache/wit/world.wit"
cp "$wit/plugin.wit" "$cache/wit/deps/sonde-plugin/plugin.wit"

mkdir -p "$out"
log=$cache/build.log
start=$(date +%s)
if ! PYTHONPATH=$lib PYTHONDONTWRITEBYTECODE=1 "$python" -c \
        'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
        -d "$cache/wit" -w reset-report componentize --stub-wasi app -p "$here/src" -o "$out/$module.tmp" \
        >"$log" 2>&1; then
    rm -f "$out/$module.tmp"
    # One line: the error and its innermost cause (componentize-py prints a chain and a backtrace).
    err=$(grep -m1 -E '^[A-Za-z]*(Error|Exception)\b|^error' "$log" || tail -n1 "$log")
    cause=$(sed -n '/^Caused by:/,/^Stack backtrace:/p' "$log" | grep -E '^ +[0-9]+: ' | tail -n1 | sed 's/^ *[0-9]*: //')
    at=$(sed -n '/^Caused by:/,/^Stack backtrace:/p' "$log" | grep -m1 -E '^ +--> ' | sed 's/^ *--> *//')
    fail "componentize-py failed: $err${cause:+ -- $cause}${at:+ at $at} (log: $log)"
fi
mv "$out/$module.tmp" "$out/$module"
cp "$here/plugin.yaml" "$out/plugin.yaml"
echo "$NAME: built $out/$module ($(wc -c <"$out/$module") bytes, $(( $(date +%s) - start )) s) and $out/plugin.yaml"
