"""benchmarks/vs_kvpress_quality.py without kvpress: the skip lines, input errors, the pure helpers (mask
packing, kept-set agreement with exact ties, --n-at) and our side on a tiny random Llama joined with a
stand-in for the kvpress side (accuracy with Wilson intervals, kept sets)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "vs_kvpress_quality.py"


def load_bench():
    return load_benchmark("vs_kvpress_quality.py")


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_skips_without_kvpress_or_without_the_model(tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    out = run("--quick", "--kvpress-python", str(missing))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("vs_kvpress_quality: skipped: ")
    summary = json.loads(lines[-1])
    assert summary["benchmark"] == "vs_kvpress_quality" and "skipped" in summary
    out = run("--quick", "--model-dir", str(tmp_path / "no-model"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and "no real model at" in lines[0]
    assert json.loads(lines[-1])["skipped"].startswith("no real model at")


@pytest.mark.parametrize("args, message", [
    (["--keep", "1.5"], "--keep must be a fraction in (0, 1)"),
    (["--presses", "h2o,nats"], "--presses must be a comma-separated subset"),
    (["--protocols", "streaming"], "--protocols must be a comma-separated subset"),
    (["--n-at", "2048"], "--n-at: '2048' is not CONTEXT=N"),
    (["--n-at", "decode@1024=3"], "PROTOCOL one of prompt, context"),
    (["--contexts", "1024,abc"], "--contexts must be comma-separated ints"),
    (["--n", "-1"], "--n must be an int >= 0"),
])
def test_bad_input_names_the_field(args, message):
    out = run(*args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_pure_helpers():
    bench = load_bench()
    g = torch.Generator().manual_seed(0)
    for L in (1, 8, 13, 1054):
        m = torch.rand(2, 3, L, generator=g) < 0.3
        packed = bench.pack_mask(m)
        assert packed.dtype == torch.uint8 and packed.shape == (2, 3, (L + 7) // 8)
        assert torch.equal(bench.unpack_mask(packed, L), m)
    assert bench.parse_n_at("2048=4, context@1024=5,", [1024, 2048]) == {(None, 2048): 4, ("context", 1024): 5}
    n_at = bench.parse_n_at("2048=4,context@2048=0", [1024, 2048])
    assert [bench.cell_n(10, n_at, p, c) for p, c in (("prompt", 1024), ("prompt", 2048), ("context", 2048))] == \
        [10, 4, 0]
    assert bench.strip_eos([5, 6, 2, 7], 2) == [5, 6] and bench.strip_eos([5, 6], 2) == [5, 6]
    assert bench.inside(0.5, (0.3, 0.7), 0.6, (0.4, 0.8)) and not bench.inside(0.2, (0.1, 0.3), 0.6, (0.4, 0.8))
    # exact ties at the cut: top-2 of [3, 1, 1, 0] may keep position 1 or 2
    ties = bench.tied_at_cut(torch.tensor([[3.0, 1.0, 1.0, 0.0], [3.0, 2.0, 1.0, 1.0]]), 2)
    assert ties.tolist() == [[False, True, True, False], [False, False, False, False]]


def test_mask_agreement_counts_sets_overlap_and_ties():
    bench = load_bench()
    a = torch.zeros(2, 1, 6, dtype=torch.bool)
    a[0, 0, [0, 1, 2]] = True
    a[1, 0, [3, 4, 5]] = True
    b = a.clone()
    assert bench.mask_agreement(a, b) == {"sets": 2, "equal": 2, "equal_up_to_ties": 2, "same_size": 2,
                                          "overlap_sum": 2.0, "kept_ours": 6, "kept_kvpress": 6}
    b[0, 0, 2], b[0, 0, 3] = False, True  # one set keeps 3 instead of 2
    got = bench.mask_agreement(a, b)
    assert got["equal"] == 1 and got["equal_up_to_ties"] == 1 and abs(got["overlap_sum"] - (1 + 2 / 3)) < 1e-6
    ties = torch.zeros_like(a)
    ties[0, 0, [2, 3]] = True  # 2 and 3 tie at the cut: either may be kept
    assert bench.mask_agreement(a, b, ties)["equal_up_to_ties"] == 2
    ties[0, 0, 3] = False
    assert bench.mask_agreement(a, b, ties)["equal_up_to_ties"] == 1
    c = a.clone()
    c[1, 0, 2] = True  # a set of another size is never equal, ties or not
    assert bench.mask_agreement(a, c, torch.ones_like(a))["equal_up_to_ties"] == 1
    with pytest.raises(ValueError, match="different shapes"):
        bench.mask_agreement(a, a[:, :, :5])


def test_our_side_and_the_join_with_a_stand_in_kvpress_side():
    bench = load_bench()
    from services.models import load_model

    handle = load_model("random:tiny-llama")
    g = torch.Generator().manual_seed(1)
    L, cl = 300, 280
    job = {"key": "k0", "ids": torch.randint(3, 200, (L,), generator=g).tolist(), "context_len": cl,
           "protocols": ["prompt", "context"], "max_new_tokens": 3, "full": True, "workload": "passkey",
           "context": 256}
    spec = {"keep": 0.25, "presses": ["streaming_llm", "knorm", "snapkv"]}
    ours = bench.ours_job(handle, job, spec)
    n_layers = handle.model.config.num_hidden_layers
    hkv = handle.model.config.num_key_value_heads
    for protocol, n_c in (("prompt", L), ("context", cl)):
        n_kept = bench.n_kept_for(n_c, 0.25)
        stream = ours["masks"][f"{protocol}/streaming_llm"]
        assert stream.shape == (n_layers, hkv, n_c)
        expected = torch.zeros(n_c, dtype=torch.bool)
        expected[: bench.N_SINK] = True
        expected[n_c - (n_kept - bench.N_SINK):] = True
        assert all(torch.equal(row, expected) for row in stream.flatten(0, 1))
        snap = ours["masks"][f"{protocol}/snapkv"]
        assert (snap.sum(-1) == n_kept).all() and snap[..., n_c - bench.WINDOW:].all()
        assert len(ours["tokens"][f"{protocol}/knorm"]) == 3
    assert len(ours["tokens"]["prompt/full"]) == 3

    # a stand-in kvpress side: the same kept sets, knorm's answers all different
    kv = {"tokens": dict(ours["tokens"]), "masks": {}, "ties": {}, "lens": {}}
    for label, m in ours["masks"].items():
        kv["masks"][label] = bench.pack_mask(m)
        kv["lens"][label] = m.shape[-1]
    kv["tokens"]["prompt/knorm"] = [t + 1 for t in ours["tokens"]["prompt/knorm"]]
    cells = [{"protocol": "prompt", "workload": "passkey", "context": 256, "n": 1, "keys": ["k0"]},
             {"protocol": "context", "workload": "passkey", "context": 256, "n": 1, "keys": ["k0"]}]
    right = ours["tokens"]["prompt/knorm"]

    def score(_job, tokens):  # "correct" = our knorm answer
        return float(tokens == right)

    meta = {"model": "random:tiny-llama", "eos": None}
    summary = bench.summarize(cells, {"k0": job}, {"k0": ours}, {"k0": kv}, score, spec["presses"], meta)
    assert summary["kept_sets_equal_same_rule"] is True and summary["kept_sets_equal_up_to_ties_same_rule"] is True
    rows = {(r["protocol"], r["press"]): r for r in summary["rows"]}
    assert set(rows) == {("prompt", "full"), *((p, n) for p in ("prompt", "context") for n in spec["presses"])}
    knorm = rows[("prompt", "knorm")]
    assert knorm["acc_ours"] == 1.0 and knorm["acc_kvpress"] == 0.0 and knorm["answers_equal"] == 0.0
    # n = 1: Wilson [0.2065, 1] and [0, 0.7935]; neither accuracy is inside the other's interval
    assert knorm["ci_ours"] == [0.2065, 1.0] and knorm["ci_kvpress"] == [0.0, 0.7935] and not knorm["inside"]
    assert summary["accuracies_inside_intervals"] is False
    assert summary["cells_outside"] == ["prompt/knorm passkey@256"]
    assert rows[("context", "snapkv")]["kept_equal"] == 1.0 and rows[("context", "snapkv")]["inside"]

    flipped = ours["masks"]["prompt/knorm"].clone()
    j = int(flipped[0, 0].nonzero()[0])
    k = int((~flipped[0, 0]).nonzero()[0])
    flipped[0, 0, j], flipped[0, 0, k] = False, True  # one head keeps another position
    kv["masks"]["prompt/knorm"] = bench.pack_mask(flipped)
    summary = bench.summarize(cells, {"k0": job}, {"k0": ours}, {"k0": kv}, score, spec["presses"], meta)
    assert summary["kept_sets_equal_same_rule"] is False and summary["kept_sets_equal_up_to_ties_same_rule"] is False
    assert summary["kept_equal_fraction"]["prompt/knorm"] == round(1 - 1 / (n_layers * hkv), 5)
    ties = torch.zeros_like(flipped)
    ties[0, 0, [j, k]] = True
    kv["ties"]["prompt/knorm"] = bench.pack_mask(ties)
    summary = bench.summarize(cells, {"k0": job}, {"k0": ours}, {"k0": kv}, score, spec["presses"], meta)
    assert summary["kept_sets_equal_same_rule"] is False and summary["kept_sets_equal_up_to_ties_same_rule"] is True
    del kv["tokens"]["prompt/full"]
    with pytest.raises(KeyError):
        bench.summarize(cells, {"k0": job}, {"k0": ours}, {"k0": kv}, score, spec["presses"], meta)
    with pytest.raises(RuntimeError, match="a side has no result"):
        bench.summarize(cells, {"k0": job}, {"k0": ours}, {}, score, spec["presses"], meta)
