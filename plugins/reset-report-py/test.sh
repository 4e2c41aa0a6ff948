#!/usr/bin/env bash
# Runs the plugin's tests: the logic under plain CPython; with --component, also builds the
# component (build.sh) and runs it in a fake host (tests/fake_host.py, the `wasmtime` package
# from PyPI installed into .cache/).
set -euo pipefail
WASMTIME_PY_VERSION=50.0.1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
fail() { echo "reset-report-py test: $*" >&2; exit 1; }

if [ "${1:-}" = --component ]; then
    bash "$here/build.sh" "$here/.cache/out"
    lib=$here/.cache/wasmtime-py-$WASMTIME_PY_VERSION
    if [ ! -f "$lib/.complete" ]; then
        rm -rf "$lib" "$lib.tmp"
        "$python" -m pip install --disable-pip-version-check --no-input --root-user-action=ignore \
            --quiet --target "$lib.tmp" "wasmtime==$WASMTIME_PY_VERSION" >"$here/.cache/pip-wasmtime.log" 2>&1 \
            || fail "pip install wasmtime==$WASMTIME_PY_VERSION failed (log: $here/.cache/pip-wasmtime.log)"
        touch "$lib.tmp/.complete"
        mv "$lib.tmp" "$lib"
    fi
    export PYTHONPATH=$lib${PYTHONPATH:+:$PYTHONPATH}
    export RESET_REPORT_WASM=$here/.cache/out/reset_report.wasm
fi
cd "$here"
PYTHONDONTWRITEBYTECODE=1 "$python" -m unittest discover -s tests -v
