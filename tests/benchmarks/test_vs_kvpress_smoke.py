"""benchmarks/vs_kvpress.py without kvpress: the skip line, input errors, and our side + the join.

kvpress itself lives in `.venv-kvpress` (`make bench-kvpress`), which the tests do not need: our
side runs here on a short prompt and is joined with a stand-in for the kvpress side.
"""

import copy
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from bench_helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "vs_kvpress.py"


def load_bench():
    return load_benchmark("vs_kvpress.py")


def test_skips_cleanly_without_kvpress(tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--kvpress-python", str(missing)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("vs_kvpress: skipped: no kvpress interpreter at")
    summary = json.loads(lines[-1])
    assert summary["benchmark"] == "vs_kvpress" and str(missing) in summary["skipped"]


def test_bad_input_names_the_field():
    out = subprocess.run([sys.executable, str(SCRIPT), "--keep", "1.5"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "--keep must be a fraction in (0, 1)" in out.stderr
    out = subprocess.run([sys.executable, str(SCRIPT), "--policies", "h2o"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "--policies must be a comma-separated subset" in out.stderr


def test_our_side_keeps_sinks_and_window_and_joins_by_prompt_hash(tmp_path):
    bench = load_bench()
    args = Namespace(seed=0, prompt_len=160, keep=0.5, steps=2, warmup=1, policies=list(bench.POLICIES),
                     prefill_chunk=64, threads=1)
    spec = bench.prepare(tmp_path, args)
    ours = bench.ours_side(spec, tmp_path)
    ours["prompt_sha256"] = spec["prompt_sha256"]
    L, n_kept = 160, bench.n_kept_for(160, 0.5)
    assert n_kept == 80
    streaming = ours["policies"]["streaming_llm"]
    assert streaming["kept_after_prefill"] == n_kept
    expected = list(range(bench.N_SINK)) + list(range(L - (n_kept - bench.N_SINK), L))
    assert all(head == expected for layer in streaming["kept_positions"] for head in layer)
    snap = ours["policies"]["snapkv"]
    window = set(range(L - bench.SNAP_WINDOW, L))
    assert all(len(head) == n_kept and window <= set(head) for layer in snap["kept_positions"] for head in layer)
    assert len(streaming["decode_times_s"]) == 2 and ours["hf_dynamic_ms"] > 0

    kv = copy.deepcopy(ours)  # a stand-in for the kvpress side: same kept sets, twice our time
    kv["side"] = "kvpress"
    for p in kv["policies"].values():
        p["decode_times_s"] = [2 * t for t in p["decode_times_s"]]
        p["decode_cpu_s"] = [2 * t for t in p["decode_cpu_s"]]
    summary = bench.summarize(spec, [kv], [ours], 1.0)
    assert summary["streaming_kept_sets_equal"] is True
    assert abs(summary["decode_ms_ours_over_kvpress_10pct"] - 0.5) < 1e-3
    kv["policies"]["streaming_llm"]["kept_positions"][0][0][-1] = 0  # one head keeps another token
    assert bench.summarize(spec, [kv], [ours], 1.0)["streaming_kept_sets_equal"] is False
    kv["prompt_sha256"] = "0" * 64
    try:
        bench.summarize(spec, [kv], [ours], 1.0)
    except RuntimeError as e:
        assert "another prompt" in str(e)
    else:
        raise AssertionError("results for another prompt were joined")
