"""benchmarks/decode_latency.py runs end to end at a tiny size and ends with its JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decode_latency_prints_a_table_and_a_json_last_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode_latency.py"), "--contexts", "1024", "--batches", "1,2",
         "--steps", "2", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    policies = ["streaming_llm", "h2o", "snapkv", "tova", "nats"]
    assert set(summary["ratio_per_policy"]) == set(policies) == set(summary["ratio_per_policy_batch2"])
    assert summary["ratio_10pct_vs_full_1k"] == max(summary["ratio_per_policy"].values())
    assert 1.0 <= summary["max_physical_over_kept"] <= 1.05  # the memory bound, at 1k tokens (~100 kept)
    for name in ["full", *policies]:
        assert any(line.startswith(name) for line in lines), name
