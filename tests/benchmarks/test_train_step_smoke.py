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
    peak = summary["peak_mib"]
    assert set(peak) == set(summary["step_s"]) and all(isinstance(v, float) for v in peak.values()), peak
    for kind in ("full", "nats"):  # the growth ratio is the one of the two measured peaks (None: 0 MiB at 64)
        lo, hi = peak[f"{kind}@64"], peak[f"{kind}@128"]
        assert summary[f"{kind}_peak_128_over_64"] == (round(hi / lo, 3) if lo else None), (kind, lo, hi)
    for kind in ("full", "nats", "reference"):
        assert any(line.startswith(kind) for line in lines), kind


def test_bad_lengths_exit_2_naming_the_flag():
    res = subprocess.run([sys.executable, str(SCRIPT), "--lengths", "1024,x"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2
    assert "--lengths must be comma-separated integers" in res.stderr
