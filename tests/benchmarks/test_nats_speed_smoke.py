"""benchmarks/nats_speed.py end to end on short contexts (the shipped tiny-nats-ft vs tiny-base): the
table, the JSON line's ratios / targets / profile, the README tables, and bad options refused with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "nats_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_runs_and_reports_ratios_targets_and_profile():
    proc = _run("--contexts", "300,1024", "--pairs", "tiny-nats-ft", "--repeats", "1", "--new-tokens", "3",
                "--profile", "--profile-context", "300")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "nats_speed" and summary["contexts"] == [300, 1024]
    table = summary["tables"]["tiny-nats-ft"]
    for lab, ctx in (("300", 300), ("1k", 1024)):
        ttft = table[f"nats@{ctx} ttft_s"] / table[f"full@{ctx} ttft_s"]
        assert summary[f"nats_ttft_over_full_{lab}"] == pytest.approx(ttft, rel=2e-2)  # the table is rounded
        assert table[f"full@{ctx} kept_fraction"] == 1.0
        assert 0 < table[f"nats@{ctx} kept_fraction"] < 1.0  # NAtS evicts
        assert table[f"nats@{ctx} kv_mib_physical"] < table[f"full@{ctx} kv_mib_physical"]
    assert summary["nats_decode_1k_le_full_met"] == (summary["nats_decode_over_full_1k"] <= 1.0)
    assert "nats_decode_8k_le_0_5_met" not in summary  # 8k did not run: no verdict
    prof = summary["profile"]
    assert {"nats", "full"} == set(prof) and prof["nats"]["decode_ops_per_step"] > 0
    assert prof["nats"]["prefill_top_ops"][0]["self_cpu_ms"] > 0
    md = "\n".join(summary["markdown_tables"])
    assert "| 1024 |" in md and "Where the decode time goes" in md


@pytest.mark.parametrize("args", [("--pairs", "nope"), ("--contexts", "1k"), ("--new-tokens", "1"),
                                  ("--device", "tpu")])
def test_bad_options_exit_2_naming_the_field(args):
    proc = _run(*args)
    assert proc.returncode == 2
    assert args[0] in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
