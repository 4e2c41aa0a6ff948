#!/usr/bin/env bash
# Builds the drop-budget-js bundle: OUT_DIR/plugin.yaml and OUT_DIR/<spec.module>.
# Usage: bash plugins/drop-budget-js/build.sh OUT_DIR
# Installs the pinned toolchain (package-lock.json: componentize-js and its deps) into
# node_modules/ beside this script with `npm ci` when it is missing or stale, then builds the
# component from src/ against ../../wit, world `drop-budget` (wit/world.wit), through componentize-js's JS API
# (build.mjs), with every WASI feature disabled.
# Environment: SONDE_WIT_DIR (default ../../wit from this folder).
set -euo pipefail

NAME=drop-budget-js

fail() { echo "$NAME build: $*" >&2; exit 1; }

[ $# -eq 1 ] && [ -n "$1" ] || fail "usage: build.sh OUT_DIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
wit=${SONDE_WIT_DIR:-$here/../../wit}
cache=$here/.cache

command -v node >/dev/null 2>&1 || fail "node not found (needs Node.js >= 18 with npm)"
command -v npm >/dev/null 2>&1 || fail "npm not found (needs Node.js >= 18 with npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || fail "Node.js $(node --version) is too old (needs >= 18)"
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
# node_modules is current when it was installed from this very package-lock.json.
lock_sum=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
stamp=$here/node_modules/.sonde-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$lock_sum" ] \
        || [ ! -f "$here/node_modules/@bytecodealliance/componentize-js/package.json" ]; then
    rm -f "$stamp"
    if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >"$cache/npm.log" 2>&1); then
        fail "npm ci failed: $(grep -m1 -i 'err' "$cache/npm.log" || tail -n1 "$cache/npm.log") (log: $cache/npm.log)"
    fi
    echo "$lock_sum" >"$stamp"
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
if ! node "$here/build.mjs" "$cache/wit" "$out/$module.tmp" >"$log" 2>&1; then
    rm -f "$out/$module.tmp"
    fail "componentize-js failed: $(grep -v '^[[:space:]]*$' "$log" | tail -n1) (log: $log)"
fi
mv "$out/$module.tmp" "$out/$module"
cp "$here/plugin.yaml" "$out/plugin.yaml"
echo "$NAME: built $out/$module ($(wc -c <"$out/$module") bytes, $(( $(date +%s) - start )) s) and $out/plugin.yaml"
