#!/usr/bin/env bash
# Runs the plugin's tests with Node's test runner: the logic alone; with --component, also
# builds the component (build.sh) and runs it in a fake host (test/fake-host.js, through jco
# transpile, which the pinned toolchain in node_modules/ provides).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "${1:-}" = --component ]; then
    bash "$here/build.sh" "$here/.cache/out"
    export DROP_BUDGET_WASM=$here/.cache/out/drop_budget.wasm
fi
cd "$here"
node --test test/logic.test.js test/component.test.js
