"""benchmarks/prefill.py runs end to end at a tiny size and ends with its JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "prefill.py"


@pytest.mark.slow
def test_prefill_prints_a_table_and_a_json_last_line():
    # One context end to end (every cell in its own interpreter: ~5 s each, most of it importing
    # transformers); the summary over several contexts is checked in-process below.
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--contexts", "640", "--policies", "full,tova", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    cells = {f"{name}@640" for name in ("hf", "full", "tova")}
    assert set(summary["ttft_s"]) == cells == set(summary["peak_rss_bytes"])
    assert all(t > 0 for t in summary["ttft_s"].values())
    assert all(b > 2**20 for b in summary["peak_rss_bytes"].values())
    side = summary["side_by_side_ttft_s"]
    assert summary["full_ttft_over_hf_640"] == pytest.approx(side["full@640"] / side["hf@640"], rel=0.01)
    assert summary["max_prefill_peak_over_full"] == pytest.approx(
        summary["peak_rss_bytes"]["tova@640"] / summary["peak_rss_bytes"]["full@640"], rel=0.01)
    for name in ("hf", "full", "tova"):
        assert any(line.startswith(name) for line in lines), name


def test_prefill_summary_over_contexts_reads_memory_at_the_longest(monkeypatch, capsys):
    prefill = load_benchmark("prefill.py", "bench_prefill")
    calls = []

    def fake_spawn(name, ctx, args, repeats):  # TTFT grows with the context, TOVA's peak is 1.5x full's
        calls.append((name, ctx, repeats))
        if name == "pair":
            return {"context": ctx, "hf_ttft_s": ctx / 1000, "full_ttft_s": ctx / 800}
        peak = ctx * (3 if name == "tova" else 2) * 2**20
        return {"policy": name, "context": ctx, "ttft_s": ctx / 900, "peak_rss_bytes": peak,
                "prefill_rss_growth_bytes": peak // 2}

    monkeypatch.setattr(prefill, "spawn", fake_spawn)
    assert prefill.main(["--contexts", "320,640", "--policies", "full,tova", "--repeats", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == [("pair", 320, 2), ("hf", 320, 1), ("full", 320, 1), ("tova", 320, 1),
                     ("pair", 640, 2), ("hf", 640, 1), ("full", 640, 1), ("tova", 640, 1)]
    assert summary["full_ttft_over_hf_320"] == summary["full_ttft_over_hf_640"] == 1.25
    assert summary["peak_context"] == 640
    assert summary["max_prefill_peak_over_full"] == summary["max_prefill_growth_over_full"] == 1.5
    assert set(summary["ttft_s"]) == {f"{n}@{c}" for n in ("hf", "full", "tova") for c in (320, 640)}
    assert summary["side_by_side_ttft_s"] == {"hf@320": 0.32, "full@320": 0.4, "hf@640": 0.64, "full@640": 0.8}


def test_prefill_rejects_an_unknown_policy_naming_the_option():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--policies", "full,bogus"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "--policies: unknown ['bogus']; allowed: full, streaming_llm, h2o, tova, snapkv" in proc.stderr
