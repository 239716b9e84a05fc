#!/usr/bin/env bash
# The GPU check of issue #12, at most ~8 minutes on one GPU (see scripts/gpu_check.py):
#   1. Triton NAtS attention forward/backward vs the reference, 4k tokens, bf16;
#   2. 30 fine-tuning steps of a tiny Llama on CUDA (natsbench finetune --model, Triton kernels);
#   3. natsbench eval with nats + the fresh adapter on CUDA;
#   (plus, after 1: the Triton variable-length decode kernel vs the torch path at a 16k store,
#   10% kept varied per head: error and ms per call of both, under "decode_kernel").
# The last stdout line is one JSON object. Without a CUDA device: {"gpu_check": "skipped",
# "error": "no CUDA device"} and exit 1, nothing else runs.
#
#   scripts/gpu_check.sh            (PYTHON=... to pick the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
    PYTHON="$(command -v python3)"
fi
# the whole check is bounded: 8 minutes, then the JSON line says it timed out
status=0
timeout 480 "$PYTHON" scripts/gpu_check.py "$@" || status=$?
if [ "$status" -eq 124 ]; then
    echo '{"gpu_check": "failed", "error": "timed out after 480 s"}'
fi
exit "$status"
