"""benchmarks/memory_truth.py runs end to end at a small size: the cache's bytes are its kept tokens'
(within its documented slack) and a 10% policy's run memory is below the full cache's."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "memory_truth.py"


def test_memory_truth_prints_tables_and_a_json_last_line():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--policies", "streaming_llm,nats", "--batches", "1,2",
         "--ratio-tokens", "1536", "--ratio-decode", "16", "--peak-tokens", "1536", "--peak-decode", "2"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    table = summary["physical_over_kept"]
    assert set(table) == {f"{p}@b{b}" for p in ("full", "streaming_llm", "nats") for b in (1, 2)}
    assert summary["accounting_matches_storage"] is True  # the cache's own count == its tensors' storages
    for row in table.values():
        assert row["accounting_matches_storage"] is True
        # 1.05 x kept + one slot per segment; >= 115 kept per head after the prefill here
        assert 1.0 <= row["after_prefill"] <= row["max_physical_over_kept"] <= 1.06
        assert row["max_decode"] <= row["max_physical_over_kept"]
    assert summary["max_physical_over_kept"] == max(r["max_physical_over_kept"] for r in table.values())
    # mid-prefill: the left-padded sequence's first chunk is all padding (empty segments, one slot each)
    assert summary["max_physical_over_kept_mid_prefill"] == max(r["max_mid_prefill"] for r in table.values())
    assert abs(table["nats@b1"]["kept_fraction"] - 0.1) < 0.01 and table["full@b1"]["kept_fraction"] == 1.0
    # peak: a 10% policy's run memory is well under the full cache's (full's KV alone is 24 MiB here)
    run = summary["peak_run_mib"]
    assert run["full"] > 24 and 0 < run["streaming_llm"] < run["full"]
    assert summary["peak_over_full_per_policy"]["streaming_llm"] < 0.8
    assert summary["peak_prefill_decode_10pct_over_full"] == max(summary["peak_over_full_per_policy"].values())
    assert summary["kv_peak_mib_engine"]["full"] >= 24 > 6 > summary["kv_peak_mib_engine"]["streaming_llm"]
    assert summary["peak_measure"] in ("vmhwm_after_clear_refs", "ru_maxrss_since_start")
    for name in ("full", "streaming_llm", "nats"):
        assert sum(line.startswith(name) for line in lines) == 3, name  # two ratio rows, one peak row


def test_memory_truth_rejects_an_unknown_policy_in_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--policies", "h2o,lru"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "--policies" in err[0] and "lru" in err[0] and "streaming_llm" in err[0]
