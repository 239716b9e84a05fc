#!/usr/bin/env bash
# The GPU check of issue #12, at most ~8 minutes on one GPU (see scripts/gpu_check.py):
#   1. Triton NAtS attention forward/backward vs the reference, 4k tokens, bf16;
#   2. 30 fine-tuning steps of a tiny Llama on CUDA (natsbench finetune --model, Triton kernels);
#   3. natsbench eval with nats + the fresh adapter on CUDA;
#   (plus, after 1: the Triton variable-length decode kernel vs the torch path at a 16k store,
#   10% kept varied per head: error and ms per call of both, under "decode_kernel");
#   4. (this script, issue #24) NAtS vs full TTFT and ms/token on CUDA, under "nats_speed".
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
out="$(mktemp)"
timeout 480 "$PYTHON" scripts/gpu_check.py "$@" >"$out" || status=$?
if [ "$status" -eq 124 ]; then
    echo '{"gpu_check": "failed", "error": "timed out after 480 s"}' >>"$out"
fi
# issue #24: NAtS vs the full cache on CUDA (benchmarks/nats_speed.py --quick: tiny-nats-ft vs tiny-base and
# the tiny Llama with its adapter, 1k / 4k, TTFT and ms/token), at most 2 minutes, only where CUDA ran;
# its JSON goes into the check's last line under "nats_speed"
speed="$(mktemp)"
if [ "$status" -ne 1 ] || ! tail -n 1 "$out" | grep -q '"skipped"'; then
    timeout 120 "$PYTHON" benchmarks/nats_speed.py --quick --device cuda --pairs tiny-nats-ft,tiny-llama-nats \
        >"$speed" 2>/dev/null || echo '{"nats_speed": "failed or timed out after 120 s"}' >>"$speed"
fi
head -n -1 "$out"
head -n -1 "$speed"
"$PYTHON" - "$out" "$speed" <<'PY'
import json, sys
def last(path):
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return {"error": lines[-1][:500]}
report = last(sys.argv[1]) or {"gpu_check": "failed", "error": "no JSON line"}
speed = last(sys.argv[2])
if speed is not None:
    report["nats_speed"] = speed
print(json.dumps(report, default=str))
PY
rm -f "$out" "$speed"
exit "$status"
