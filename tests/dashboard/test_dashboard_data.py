import itertools
import math
import random

import pandas as pd
import pytest
from fixture_runs import FAILED_ERROR, MODEL, fixture_records

from dashboard import data


@pytest.fixture(scope="module")
def df():
    return data.records_frame(fixture_records())


def _brute_force_frontier(points, higher_is_better=True):
    """Indices of points that no other point dominates (x lower better)."""
    sign = 1 if higher_is_better else -1
    keep = set()
    for i, (xi, yi) in enumerate(points):
        dominated = any(
            xj <= xi and sign * yj >= sign * yi and (xj < xi or sign * yj > sign * yi)
            for j, (xj, yj) in enumerate(points) if j != i
        )
        if not dominated:
            keep.add(i)
    return keep


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_matches_brute_force(seed, higher):
    rng = random.Random(seed)
    # coarse grid -> many ties in x and in y
    points = [(rng.randint(0, 6), rng.randint(0, 6) / 6) for _ in range(25)]
    x = pd.Series([p[0] for p in points], dtype=float)
    y = pd.Series([p[1] for p in points], dtype=float)
    mask = data.pareto_mask(x, y, higher_is_better=higher)
    assert set(mask[mask].index) == _brute_force_frontier(points, higher)


def test_pareto_mask_ignores_missing_values():
    x = pd.Series([1.0, 2.0, math.nan, 0.5])
    y = pd.Series([0.5, 0.9, 1.0, math.nan])
    mask = data.pareto_mask(x, y)
    assert mask.tolist() == [True, True, False, False]


def test_pareto_frontier_per_workload_is_monotone(df):
    done = df[(df["status"] == "done") & df["accuracy"].notna()]
    front = data.pareto_frontier(done, "kv_bytes_physical", "accuracy", by="workload")
    assert set(front["workload"]) == {"passkey", "kv_recall"}
    for _, part in front.groupby("workload"):
        # along the frontier more bytes must buy strictly more accuracy
        assert part["kv_bytes_physical"].is_monotonic_increasing
        assert part["accuracy"].is_monotonic_increasing
        # every run of the workload is dominated by or on the frontier
        allw = done[done["workload"] == part["workload"].iloc[0]]
        for _, row in allw.iterrows():
            cheaper = part[part["kv_bytes_physical"] <= row["kv_bytes_physical"]]
            assert len(cheaper) and cheaper["accuracy"].max() >= row["accuracy"]


def test_perplexity_frontier_prefers_lower(df):
    lm = df[(df["workload"] == "lm_text") & (df["status"] == "done")]
    front = data.pareto_frontier(lm, "kv_bytes_physical", "perplexity")
    assert front["perplexity"].is_monotonic_decreasing
    assert front["perplexity"].iloc[-1] == lm["perplexity"].min()


def test_records_frame_derives_columns(df):
    assert len(df) == len(fixture_records())
    lm = df[(df["workload"] == "lm_text") & (df["status"] == "done")]
    assert lm["accuracy"].isna().all() and lm["perplexity"].notna().all()
    nats = df[df["policy"] == "nats"]
    assert set(nats["budget"].dropna()) == {0.125, 0.25, 0.5}
    assert df[df["policy"] == "full"]["budget"].isna().all()
    assert set(df["context_length"].dropna()) == {256.0, 512.0, 1024.0}
    failed = df[df["status"] == "failed"]
    assert failed["error"].tolist() == [FAILED_ERROR]


def test_records_frame_parses_json_text_and_empty_input():
    rec = {"policy": "h2o", "policy_params": '{"budget": 0.25}', "workload_params": '{"context_length": 64}',
           "extras": '{"perplexity": 4.5}', "status": "done"}
    df = data.records_frame([rec])
    assert df.loc[0, "budget"] == 0.25 and df.loc[0, "context_length"] == 64 and df.loc[0, "perplexity"] == 4.5
    empty = data.records_frame([])
    assert empty.empty and {"accuracy", "budget", "context_length"} <= set(empty.columns)


def test_filter_runs(df):
    part = data.filter_runs(df, policies=["nats", "full"], budget_range=(0.2, 0.3))
    assert set(part["policy"]) == {"nats", "full"}
    assert set(part["budget"].dropna()) == {0.25}
    no_full = data.filter_runs(df, budget_range=(0.2, 0.3), include_unbudgeted=False)
    assert "full" not in set(no_full["policy"])
    assert len(data.filter_runs(df, workloads=["kv_recall"], sweeps=["tiny-main"])) == 16


def test_sweep_overview_counts(df):
    table = data.sweep_overview(df, ["tiny-empty"]).set_index("sweep")
    assert table.loc["tiny-main", ["runs", "done", "failed", "pending"]].tolist() == [81, 80, 1, 0]
    assert table.loc["tiny-running", ["runs", "done", "failed", "pending"]].tolist() == [3, 1, 0, 2]
    assert table.loc["tiny-empty", "runs"] == 0
    assert table.loc["tiny-running", "progress"] == pytest.approx(1 / 3)


def test_sweep_overview_uses_store_counts(df):
    store_sweeps = [{"name": "tiny-main", "counts": {"pending": 4, "running": 1, "done": 7, "failed": 2},
                     "updated_at": "2026-11-24T05:00:00.000+00:00"}]
    table = data.sweep_overview(df, store_sweeps).set_index("sweep")
    assert table.loc["tiny-main", ["runs", "done", "failed", "pending"]].tolist() == [14, 7, 2, 5]
    assert table.loc["tiny-main", "last_update"] == pd.Timestamp("2026-11-24T05:00:00Z")


def test_leaderboard_one_row_per_policy_budget(df):
    lb = data.leaderboard(df, MODEL, "passkey")
    pairs = [(p, b) for p, b in zip(lb["policy"], lb["budget"].map(data.budget_label), strict=True)]
    assert len(pairs) == len(set(pairs)) == 16  # full + 5 policies x 3 budgets
    assert lb["accuracy"].is_monotonic_decreasing
    # seeds and context lengths averaged: passkey has 3 contexts -> 3 runs per cell (failed run excluded)
    assert set(lb[lb["policy"] != "full"]["runs"]) == {3}
    h2o = df[(df["policy"] == "h2o") & (df["budget"] == 0.25) & (df["workload"] == "passkey")]
    row = lb[(lb["policy"] == "h2o") & (lb["budget"] == 0.25)].iloc[0]
    assert row["kv_bytes_physical"] == pytest.approx(h2o["kv_bytes_physical"].mean())


def test_leaderboard_perplexity_workload_sorted_ascending(df):
    lb = data.leaderboard(df, MODEL, "lm_text")
    assert lb["accuracy"].isna().all()
    assert lb["perplexity"].is_monotonic_increasing
    best = data.best_per_policy(lb, "perplexity")
    assert best["policy"].is_unique and best["perplexity"].is_monotonic_increasing


def test_latency_by_context(df):
    lat = data.latency_by_context(df)
    nats = lat[(lat["policy"] == "nats") & (lat["budget"] == 0.25) & (lat["model"] == MODEL)]
    # passkey at 256 / 1024, passkey + kv_recall + lm_text at 512
    assert nats["context_length"].tolist() == [256, 512, 1024]
    assert nats["kv_bytes_physical"].is_monotonic_increasing
    assert (lat["tpot_ms"] == lat["tpot_s"] * 1e3).all()


def test_run_label_and_metrics(df):
    failed = df[df["status"] == "failed"].iloc[0]
    assert data.run_label(failed).startswith("FAILED tova @ 0.125")
    assert data.run_metrics(failed).empty
    lm = df[(df["workload"] == "lm_text") & (df["status"] == "done")].iloc[0]
    metrics = dict(itertools.islice(data.run_metrics(lm).itertuples(index=False), 100))
    assert "perplexity" in metrics and "accuracy" not in metrics and "extras.nll" in metrics


def test_wilson_interval_known_values():
    # Wilson 95% for 17 / 20 = 0.85: [0.640, 0.948]; all correct on 20: [0.839, 1]
    lo, hi = data.wilson_interval(0.85, 20)
    assert (round(lo, 3), round(hi, 3)) == (0.64, 0.948)
    lo1, hi1 = data.wilson_interval(1.0, 20)
    assert round(lo1, 3) == 0.839 and hi1 == 1.0
    lo100, hi100 = data.wilson_interval(0.85, 100)
    assert lo < lo100 < 0.85 < hi100 < hi  # more examples, narrower
    assert all(math.isnan(v) for v in data.wilson_interval(float("nan"), 20))
    assert all(math.isnan(v) for v in data.wilson_interval(0.5, 0))


def test_leaderboard_intervals_pool_the_examples_of_a_row(df):
    lb = data.leaderboard(df, MODEL, "passkey")
    # 8 examples a run: every row pools its runs' examples (3 context lengths; full has a 4th run,
    # the cell shared by two sweeps)
    assert (lb["n"] == 8 * lb["runs"]).all() and set(lb[lb["policy"] != "full"]["n"]) == {24.0}
    for _, row in lb.iterrows():
        lo, hi = data.wilson_interval(row["accuracy"], row["n"])
        assert row["ci_low"] == pytest.approx(lo) and row["ci_high"] == pytest.approx(hi)
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert data.leaderboard(df, MODEL, "lm_text")[["ci_low", "ci_high", "n"]].isna().all().all()
    assert data.interval_label(0.85, 0.64, 0.948) == "0.850 [0.640, 0.948]"


def test_n_examples_falls_back_to_the_examples_in_the_record():
    rec = {"policy": "full", "status": "done", "accuracy": 0.5, "workload": "passkey",
           "extras": {"examples": [{"score": 1.0}, {"score": 0.0}, {"score": 1.0}, {"score": 0.0}]}}
    assert data.records_frame([rec]).loc[0, "n_examples"] == 4
    rec = {"policy": "full", "status": "done", "accuracy": 0.5, "config": {"n_examples": 6}}
    assert data.records_frame([rec]).loc[0, "n_examples"] == 6


def test_default_workload_is_where_the_full_cache_scores_best(df):
    # kv_recall comes first by name, but the full cache does not solve it (as on the shipped models)
    assert sorted(df["workload"].unique())[0] == "kv_recall"
    assert data.default_workload(df, MODEL) == "passkey"
    assert data.default_workload(df[df["workload"] == "lm_text"], MODEL) == "lm_text"
    # a model without full-cache runs: the full cache of the other models decides
    other = df.assign(model=df["model"].where(df["policy"] == "full", "nats-only"))
    assert data.default_workload(other, "nats-only") == "passkey"
    assert data.default_workload(df, "no-such-model") is None
