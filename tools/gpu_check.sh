#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py says what it runs): one device call of at most 6 minutes.
#
#   bash tools/gpu_check.sh [--parts correctness,throughput,jpeg,memory] [--out DIR]
#
# On the GPU machine, carry device_kit/core (built here by tools/device_kit.sh, ~50 MiB) with
# the working tree; this sets it up (ffcv and the region decoder for that Python, into /tmp)
# and runs every part it can. Without the kit, or on a CPU, the parts that need it are
# reported skipped with the reason. Results: $OUT/gpu_check.json and $OUT/gpu_check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -f device_kit/core/device_env.sh ]; then
    # shellcheck disable=SC1091
    . device_kit/core/device_env.sh
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python  # a development checkout: everything is installed there
fi
exec "$PY" tools/gpu_check.py "$@"
