"""benchmarks/train_step.py runs end to end at a tiny size and ends with its JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


@pytest.mark.slow  # ~30 s: five short subprocesses
def test_train_step_prints_a_table_and_a_json_last_line():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--lengths", "64,128", "--tokens", "256", "--steps", "1", "--warmup", "0",
         "--threads", "1", "--reference"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["benchmark"] == "train_step" and summary["lengths"] == [64, 128]
    for key in ("nats_over_full_step_64", "nats_over_full_step_128", "reference_over_full_step_64"):
        assert summary[key] > 0, key
    assert set(summary["step_s"]) == {"full@64", "nats@64", "reference@64", "full@128", "nats@128"}
    assert all(v >= 0 for v in summary["peak_mib"].values()) and len(summary["peak_mib"]) == 5
    assert summary["nats_peak_128_over_64"] is None or summary["nats_peak_128_over_64"] >= 0
    for kind in ("full", "nats", "reference"):
        assert any(line.startswith(kind) for line in lines), kind


def test_bad_lengths_exit_2_naming_the_flag():
    res = subprocess.run([sys.executable, str(SCRIPT), "--lengths", "1024,x"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2
    assert "--lengths must be comma-separated integers" in res.stderr
