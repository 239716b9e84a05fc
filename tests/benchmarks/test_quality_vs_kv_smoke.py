"""benchmarks/quality_vs_kv.py at a tiny size: the JSON keys, intervals around their values, budgets held in
physical bytes, and the interval helpers on known cases."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality_vs_kv.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_vs_kv  # noqa: E402


def test_wilson_interval_on_known_cases():
    # Wilson 95% (z = 1.96): 5/10 -> [0.2366, 0.7634]; 0/10 -> [0, 0.2775]; 10/10 -> [0.7225, 1]
    assert quality_vs_kv.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert quality_vs_kv.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert quality_vs_kv.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 95 of 100: [0.8882, 0.9785]
    assert quality_vs_kv.wilson(95, 100) == pytest.approx((0.8882, 0.9785), abs=1e-4)


def test_bootstrap_ppl_brackets_the_pooled_perplexity():
    nll = [2.0 * 100, 2.5 * 100, 1.5 * 100, 2.2 * 100]
    tokens = [100, 100, 100, 100]
    low, high = quality_vs_kv.bootstrap_ppl(nll, tokens, resamples=500)
    pooled = math.exp(sum(nll) / sum(tokens))
    assert math.exp(1.5) <= low < pooled < high <= math.exp(2.5)
    # one window repeated: no spread
    assert quality_vs_kv.bootstrap_ppl([300.0] * 3, [100] * 3, resamples=50) == pytest.approx((math.exp(3),) * 2)


@pytest.fixture(scope="module")
def summary():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--families", "gpt", "--workloads", "passkey@256,lm_text@128",
         "--headline", "passkey@256", "--budgets", "0.1,0.5", "--n-headline", "4", "--n-grid", "3", "--n-lm", "2",
         "--threads", "1"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    ).stdout
    lines = out.strip().splitlines()
    assert any(line.startswith("gpt ") for line in lines[:-1])  # the human table before the JSON
    return json.loads(lines[-1])


def test_json_has_the_headline_keys_and_points(summary):
    for key in ("full_acc", "nats_acc", "nats_kv_fraction", "best_baseline", "best_baseline_acc_at_nats_kv",
                "nats_acc_ci95", "nats_acc_over_full_acc", "nats_minus_best_baseline_acc", "intervals_separate",
                "points"):
        assert key in summary, key
    assert summary["headline"] == {"family": "gpt", "workload": "passkey@256"}
    assert summary["best_baseline"] in quality_vs_kv.BASELINES
    assert summary["nats_minus_best_baseline_acc"] == pytest.approx(
        summary["nats_acc"] - summary["best_baseline_acc_at_nats_kv"], abs=1e-5)
    assert summary["intervals_separate"] == (summary["nats_acc_ci95"][0] > summary["best_baseline_acc_ci95"][1])
    assert "passkey@256.nats_acc" in summary["gpt"]
    row_met = summary["gpt"]["passkey@256.targets_met"]
    assert summary["all_headline_rows_met"] == row_met
    assert summary["headline_rows_missed"] == ("none" if row_met else "gpt/passkey@256")
    points = summary["points"]
    # per workload: full + nats + 4 baselines x (2 budgets + at NAtS's fraction)
    assert len(points) == 2 * (2 + 4 * 3)
    for p in points:
        assert {"model", "workload", "policy", "budget", "kv_fraction", "value", "ci_low", "ci_high", "metric",
                "n"} <= set(p)
        assert p["ci_low"] <= p["value"] <= p["ci_high"], p
        assert p["metric"] == ("perplexity" if p["workload"].startswith("lm_text") else "accuracy")
    nats = next(p for p in points if p["policy"] == "nats" and p["workload"] == "passkey@256")
    assert nats["model"] == "tiny-nats-ft" and nats["n"] == 4
    assert summary["nats_kv_fraction"] == nats["kv_fraction"]
    assert 0 < nats["kv_fraction"] < 1
    full = next(p for p in points if p["policy"] == "full" and p["workload"] == "passkey@256")
    assert full["kv_fraction"] == 1.0 and summary["full_acc"] == full["value"]


def test_budgeted_baselines_hold_their_budget_in_physical_bytes(summary):
    """kv_fraction (physical bytes / full's physical bytes on the same instances) <= budget, up to the cache's
    documented slack (5% + one slot per segment, and the ceil of budget x tokens). SnapKV's budget covers the
    prompt only (generated tokens are appended), so it is checked against the prompt budget plus the answer."""
    for p in summary["points"]:
        if p["policy"] in ("full", "nats") or (p["policy"] == "snapkv" and p["workload"].startswith("lm_text")):
            continue
        context = int(p["workload"].split("@")[1])
        slack = 1.05 * p["budget"] + 3 / context
        if p["policy"] == "snapkv":
            slack += 40 / context  # the generated answer tokens appended after the compressed prompt
        assert p["kv_fraction"] <= slack, p
        assert p["kv_fraction"] >= 0.9 * p["budget"], p
    at = [p for p in summary["points"] if p["at_nats_kv"]]
    assert len(at) == 8 and all(p["budget"] >= summary["nats_kv_fraction"] or p["workload"] != "passkey@256"
                                for p in at)


def test_bad_option_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", "gpt,bogus"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "--families: unknown ['bogus']; allowed: gpt, tiny_llama, smollm2"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_adapter_override_is_the_one_nats_runs_with(tmp_path):
    import shutil

    candidate = tmp_path / "candidate"
    shutil.copytree(ROOT / "models" / "tiny-llama-nats", candidate)
    out = _run("--families", "tiny_llama", "--workloads", "passkey@256", "--headline", "passkey@256",
               "--budgets", "0.5", "--n-headline", "2", "--n-grid", "1", "--threads", "1", "--adapter", str(candidate))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["tiny_llama_adapter"] == str(candidate)
    nats = [p for p in summary["points"] if p["policy"] == "nats"]
    assert len(nats) == 1 and nats[0]["model"] == f"tiny-llama-base + {candidate}"
    # full and the baselines stay on the base weights
    assert all(p["model"] == "tiny-llama-base" for p in summary["points"] if p["policy"] != "nats")


def test_bad_adapter_option_is_refused_with_one_line(tmp_path):
    out = _run("--families", "tiny_llama", "--adapter", str(tmp_path))
    assert out.returncode == 2 and "--adapter" in out.stderr and "adapter_config.json" in out.stderr
    out = _run("--families", "gpt", "--adapter", str(ROOT / "models" / "tiny-llama-nats"))
    assert out.returncode == 2 and "--adapter" in out.stderr and "tiny_llama" in out.stderr


def test_every_protocol_of_every_chosen_baseline_is_a_point():
    out = _run("--families", "gpt", "--workloads", "passkey@256", "--headline", "passkey@256", "--budgets", "none",
               "--baselines", "tova,snapkv", "--protocols", "all", "--n-headline", "2", "--threads", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    at = sorted((p["policy"], p["compress"]) for p in summary["points"] if p["at_nats_kv"])
    assert at == [("snapkv", "context"), ("snapkv", "prompt"), ("tova", "context"), ("tova", "prompt"),
                  ("tova", "streaming")]
    best = max((p for p in summary["points"] if p["at_nats_kv"]), key=lambda p: (p["value"], -p["kv_fraction"]))
    assert summary["best_baseline"] == quality_vs_kv.label_of(best)
    assert quality_vs_kv.label_of({"policy": "tova", "compress": "prompt"}) == "tova/prompt"
    assert quality_vs_kv.label_of({"policy": "tova", "compress": "streaming"}) == "tova"
    assert summary["baselines"] == ["tova", "snapkv"] and summary["protocols"] == "all"


def test_unknown_baseline_is_refused():
    proc = _run("--baselines", "tova,nope")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("--baselines: unknown ['nope']; allowed: all, or")
