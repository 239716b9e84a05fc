"""benchmarks/prefill.py runs end to end at a tiny size and ends with its JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "prefill.py"


@pytest.mark.slow
def test_prefill_prints_a_table_and_a_json_last_line():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--contexts", "320,640", "--policies", "full,tova", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    cells = {f"{name}@{ctx}" for name in ("hf", "full", "tova") for ctx in (320, 640)}
    assert set(summary["ttft_s"]) == cells == set(summary["peak_rss_bytes"])
    assert all(t > 0 for t in summary["ttft_s"].values())
    side = summary["side_by_side_ttft_s"]
    assert summary["full_ttft_over_hf_640"] == pytest.approx(side["full@640"] / side["hf@640"], rel=0.01)
    assert "full_ttft_over_hf_320" in summary
    assert summary["peak_context"] == 640  # the memory ratio is read at the longest context
    assert summary["max_prefill_peak_over_full"] == pytest.approx(
        summary["peak_rss_bytes"]["tova@640"] / summary["peak_rss_bytes"]["full@640"], rel=0.01)
    for name in ("hf", "full", "tova"):
        assert any(line.startswith(name) for line in lines), name


def test_prefill_rejects_an_unknown_policy_naming_the_option():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--policies", "full,bogus"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "--policies: unknown ['bogus']; allowed: full, streaming_llm, h2o, tova, snapkv" in proc.stderr
