"""`services.metrics`: aggregation of engine results into record fields, peak memory, JSON safety."""

import math
from types import SimpleNamespace

import pytest

from services.metrics import CellMetrics, PeakMemory, json_safe
from services.workloads.base import Instance


def _inst(i, n_new=5):
    return Instance(id=f"w/{i}", workload="w", prompt="p" * 10, answer="a", max_new_tokens=n_new, meta={"depth": 0.5})


def _result(ttft, tpot, phys, full, kept, peak):
    return SimpleNamespace(ttft_s=ttft, tpot_s=tpot, tokens_per_s=3.0, kv_bytes_physical=phys,
                           kv_bytes_physical_peak=peak, kv_bytes_full=full, kept_fraction=kept)


def test_generation_summary_aggregates_examples():
    m = CellMetrics()
    m.start()
    m.add_generation(_inst(0), _result(0.2, 0.01, 1000, 4000, 0.25, 1200), "a", 1.0, 10, 5)
    m.add_generation(_inst(1), _result(0.4, 0.03, 3000, 4000, 0.75, 3100), "b", 0.0, 10, 5)
    fields, extras = m.summary()
    assert fields["accuracy"] == 0.5 and fields["n_examples"] == 2
    assert fields["ttft_s"] == pytest.approx(0.3) and fields["tpot_s"] == pytest.approx(0.02)
    # decode throughput: 8 tokens after the first in 4 * 0.01 + 4 * 0.03 s
    assert fields["tokens_per_s"] == pytest.approx(8 / 0.16)
    assert fields["kv_bytes_physical"] == 2000 and fields["kv_bytes_full"] == 4000
    assert fields["kept_fraction"] == pytest.approx(0.5)
    assert extras["kv_bytes_physical_peak"] == 3100 and extras["tokens_per_s_end_to_end"] == 3.0
    assert fields["peak_memory_bytes"] == extras["peak_rss_bytes"] > 0
    assert [e["id"] for e in extras["examples"]] == ["w/0", "w/1"]


def test_single_token_answers_have_no_tpot():
    m = CellMetrics()
    m.start()
    m.add_generation(_inst(0, 1), _result(0.2, 0.0, 1, 1, 1.0, 1), "a", 1.0, 10, 1)
    fields, _ = m.summary()
    assert fields["tpot_s"] is None and fields["ttft_s"] == pytest.approx(0.2)


def test_nll_summary_skips_padding_nans_and_gives_perplexity():
    import torch

    m = CellMetrics()
    m.start()
    m.add_nll(_inst(0), torch.tensor([[1.0, 2.0, float("nan")]]), 0.5)
    m.add_nll(_inst(1), [3.0], 0.25)
    fields, extras = m.summary("nll")
    assert fields["accuracy"] is None and fields["n_examples"] == 2
    assert extras["nll"] == pytest.approx(2.0) and extras["ppl"] == pytest.approx(math.exp(2.0))
    assert extras["scored_tokens"] == 3 and extras["nll_nan_tokens"] == 1
    assert fields["tokens_per_s"] == pytest.approx((2 / 0.5 + 1 / 0.25) / 2)


def test_peak_rss_sees_a_large_allocation():
    mem = PeakMemory("cpu")
    mem.start()
    before = mem.read()["peak_rss_bytes"]
    block = bytearray(200 * 2**20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    after = mem.read()
    del block
    assert after["peak_rss_bytes"] >= before + 150 * 2**20
    assert after["peak_rss_scope"] in ("cell", "process")


def test_json_safe_replaces_non_finite_numbers():
    assert json_safe({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {
        "a": [1.0, None], "b": {"c": None}, "d": "x"}
