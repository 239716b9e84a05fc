"""benchmarks/real_model.py's functions on `random:tiny-llama` (CI needs no real model for this): the
prompt, the byte counts of the bandwidth floor, the token clock, the end-to-end summary and its targets,
and bad options refused with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "real_model.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from services.models import load_model

    return load_model("random:tiny-llama", dtype="float32")


def test_prompt_is_real_text_cut_to_the_length(tiny):
    ids = real_model.prompt_ids(tiny.tokenizer, 300)
    assert ids.shape == (1, 300) and ids.dtype == torch.long
    text = tiny.tokenizer.decode(ids[0].tolist())
    from nats_model.data.haystack import english_text

    assert len(text) > 300 and text[:200] in english_text()  # the real text itself, from its start


def test_weight_bytes_counts_a_tied_tensor_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "norm": torch.nn.LayerNorm(4)})
    assert real_model.weight_bytes(model) == (10 * 4 + 4 + 4) * 4


def test_kv_bytes_match_what_the_engine_keeps_and_the_clock_times_every_token(tiny):
    import nats_model.engine.generation as gen
    from nats_model.policies import build

    ids = real_model.prompt_ids(tiny.tokenizer, 64)
    original = gen._pick
    row = real_model.run_policy(tiny.model, ids, "full", 1.0, new_tokens=5)
    assert gen._pick is original  # the clock is removed again
    # the full cache holds the prompt and the 4 decoded inputs (the last token picked is never fed)
    assert row["kv_bytes_read"] == real_model.kv_bytes(tiny.model, 64 + 4)
    assert row["ttft_s"] > 0 and row["decode_ms"] > 0
    evicting = real_model.run_policy(tiny.model, ids, "streaming_llm", 0.25, new_tokens=5)
    assert evicting["kv_bytes_read"] < row["kv_bytes_read"]
    with real_model.token_clock() as stamps:
        gen.generate(tiny.model, ids, build("full"), max_new_tokens=3)
    assert len(stamps) == 3 and stamps == sorted(stamps)


def test_main_prints_tables_then_one_json_line_with_targets(tiny, capsys):
    rc = real_model.main(["--model", "random:tiny-llama", "--contexts", "64,128", "--policies", "h2o,tova",
                          "--new-tokens", "3", "--copy-gib", "0.01", "--profile-context", "128",
                          "--profile-steps", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    rows = {f"{n}@{c}" for n in ("hf", "full", "h2o", "tova") for c in (64, 128)}
    assert set(summary["decode_ms_per_token"]) == rows == set(summary["ttft_s"]) == set(summary["decode_over_floor"])
    for lab in ("64", "128"):
        ttft = summary["ttft_s"]
        assert summary[f"full_ttft_over_hf_{lab}"] == pytest.approx(ttft[f"full@{lab}"] / ttft[f"hf@{lab}"], rel=0.05)
        assert summary[f"full_decode_over_floor_{lab}"] == summary["decode_over_floor"][f"full@{lab}"]
    assert summary["max_full_decode_over_floor"] == max(summary["full_decode_over_floor_64"],
                                                        summary["full_decode_over_floor_128"])
    targets = {(t["name"], t["limit"]): t for t in summary["targets"]}
    assert set(targets) == {("max_full_decode_over_floor", 2.0), ("max_full_decode_over_floor (moonshot)", 1.5),
                            ("max_full_ttft_over_hf", 1.0)}
    for t in targets.values():
        assert t["met"] is (t["value"] <= t["limit"])
    ops = summary["profile_full_decode_top_ops"]
    assert 0 < len(ops) <= real_model.TOP_OPS
    shares = [op["self_cpu_share"] for op in ops]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1.0 + 1e-6
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::linear") for op in ops)  # the projections show
    assert summary["copy_bandwidth_gb_s"] > 0 and summary["weight_bytes"] == real_model.weight_bytes(tiny.model)
    for name in ("hf", "full", "h2o", "tova"):
        assert any(line.startswith(name) for line in lines), name
    assert any("ratios" in line for line in lines)  # the shared-machine caveat is printed


@pytest.mark.parametrize("args, message", [
    (["--policies", "h2o,bogus"], "--policies: unknown bogus; allowed: streaming_llm, h2o, snapkv, tova"),
    (["--budget", "0"], "--budget must be in (0, 1], got 0.0"),
    (["--new-tokens", "1"], "--new-tokens must be >= 2, got 1"),
    (["--model", "no-such-model"], "--model 'no-such-model':"),
])
def test_bad_options_exit_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""
