"""benchmarks/from_scratch.py runs end to end on tiny settings and ends with its JSON summary."""

import json
import math
from pathlib import Path

import pytest
from bench_helpers import load_benchmark

from nats_model.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "from_scratch.py"
PPL_KEYS = ("scratch_nats_ppl", "twin_full_ppl", "twin_h2o_12_5_ppl", "twin_streaming_12_5_ppl",
            "twin_h2o_at_nats_ppl", "twin_streaming_at_nats_ppl")


def _module():
    return load_benchmark("from_scratch.py", "from_scratch_bench")


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny random NAtS model and its full twin (same shape) as checkpoint folders."""
    paths = []
    for attention in ("nats", "full"):
        cfg = GPTConfig(n_layer=1, d_model=32, n_head=2, n_kv_head=2, attention=attention, window=8,
                        rope_theta=10000.0)
        import torch

        torch.manual_seed(0)
        path = tmp_path / attention
        GPT(cfg).save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def test_from_scratch_prints_a_table_and_a_json_last_line(tmp_path, capsys):
    nats, full = _pair(tmp_path)
    rc = _module().main(["--nats-model", str(nats), "--full-model", str(full), "--context", "48",
                         "--windows", "3", "--bootstrap", "50"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert any(line.startswith("| nats | nats | learned") for line in lines)
    for key in PPL_KEYS:
        assert math.isfinite(out[key]) and out[key] > 1.0, key
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] * 1.0001 and out[key] <= hi * 1.0001, key  # the point estimate lies inside
    frac = out["scratch_nats_kv_fraction"]
    assert 0.0 < frac <= 1.0
    # the baselines at the NAtS fraction really run at that budget; the 12.5% ones at 12.5%
    assert out["twin_h2o_at_nats_kv_fraction"] == pytest.approx(frac, abs=0.05)
    assert out["twin_h2o_12_5_kv_fraction"] == pytest.approx(0.125, abs=0.03)
    assert out["n"] == 3 and out["context"] == 48 and out["scored_tokens_per_cell"] == 3 * 47
    lo, hi = out["nats_minus_h2o_12_5_nll_ci95"]  # paired over the same windows
    assert lo <= out["nats_minus_h2o_12_5_nll"] <= hi


def test_from_scratch_rejects_a_missing_model_naming_the_option(tmp_path, capsys):
    rc = _module().main(["--nats-model", str(tmp_path / "nope"), "--windows", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nats-model" in err[0] and "no config.json" in err[0]


def test_from_scratch_rejects_too_few_windows(capsys):
    assert _module().main(["--windows", "1"]) == 2
    assert "--windows must be >= 2" in capsys.readouterr().err


def test_bootstrap_interval_brackets_the_mean():
    mod = _module()
    lo, hi = mod.bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1], 500, 0)
    assert 1.0 <= lo <= 2.5 <= hi <= 4.0
    assert mod.bootstrap_mean_ci([2.0, 2.0], [1, 5], 50, 0) == (2.0, 2.0)
