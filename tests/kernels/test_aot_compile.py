"""The kernels compile for an H100 (sm_90) without a GPU: catches what the CPU interpreter lets through."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "nats_model.kernels.aot_check", "--arch", "90", "--dtype", "bf16",
                           "--head-dim", "64", "--block", "64"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"] for r in rows[:-1]}
    assert kernels == {"nats_fwd_kernel", "nats_bwd_dkdv_kernel", "nats_bwd_dq_kernel"}
    assert rows[-1]["compiled"] == 4
    assert 0 < rows[-1]["max_shared_bytes"] <= 228 * 1024  # fits an H100 SM
