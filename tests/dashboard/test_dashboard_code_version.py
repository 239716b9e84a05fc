"""Runs of older code versions in the dashboard: marked, counted apart, left out of comparisons."""

from __future__ import annotations

import copy

import pytest
from fixture_runs import MODEL, fixture_records

from dashboard import data
from services.declaration import METRIC_FIELDS


@pytest.fixture(scope="module")
def records():
    """The fixture runs of this code version plus an old-version copy of the passkey runs of
    tiny-main, whose accuracy was (say) 1.0 under the old code."""
    current = [{**r, "code_version": data.CODE_VERSION} for r in fixture_records()]
    old = []
    for i, r in enumerate(current):
        if r["sweep"] == "tiny-main" and r["workload"] == "passkey" and r["status"] == "done":
            o = copy.deepcopy(r)
            o.update(run_key=f"old-{i:04d}", code_version="1", accuracy=1.0)
            old.append(o)
    assert old
    return current, old


def test_records_frame_marks_older_code_versions(records):
    current, old = records
    df = data.records_frame(current + old)
    assert int(df["stale"].sum()) == len(old)
    assert set(df[df["stale"]]["code_version"]) == {"1"}
    # records without a code version (stores older than that field's reader) are not marked
    assert not data.records_frame([{k: v for k, v in current[0].items() if k != "code_version"}])["stale"].any()


def test_filters_leave_old_runs_out_of_comparisons_unless_asked(records):
    current, old = records
    df = data.records_frame(current + old)
    filtered = data.filter_runs(df)
    assert len(filtered) == len(current) and not filtered["stale"].any()
    assert len(data.filter_runs(df, include_stale=True)) == len(current) + len(old)
    # the leaderboard of the filtered runs is the leaderboard without the old runs
    lb_new = data.leaderboard(filtered, MODEL, "passkey")
    lb_ref = data.leaderboard(data.records_frame(current), MODEL, "passkey")
    assert lb_new.equals(lb_ref) and (lb_new["accuracy"] < 1.0).any()


def test_sweep_overview_counts_old_runs_apart(records):
    current, old = records
    df = data.records_frame(current + old)
    table = data.sweep_overview(df).set_index("sweep")
    ref = data.sweep_overview(data.records_frame(current)).set_index("sweep")
    assert table.loc["tiny-main", "stale"] == len(old)
    assert table.loc["tiny-main", ["runs", "done", "failed", "pending"]].tolist() == \
        ref.loc["tiny-main", ["runs", "done", "failed", "pending"]].tolist()
    from_store = data.sweep_overview(df, [{"name": "tiny-main", "counts": {"done": 2}, "stale": 5}])
    assert from_store.set_index("sweep").loc["tiny-main", "stale"] == 5


def test_run_label_says_old_code(records):
    current, old = records
    df = data.records_frame(current + old)
    row = df[df["stale"]].iloc[0]
    assert data.run_label(row).startswith("OLD CODE v1 ")
    assert not data.run_label(df[~df["stale"]].iloc[0]).startswith("OLD")


def test_metric_list_is_the_declared_metrics_plus_perplexity():
    assert data.METRICS == (METRIC_FIELDS[0], "perplexity", *METRIC_FIELDS[1:])
    assert data.HIGHER_IS_BETTER["accuracy"] is True and data.HIGHER_IS_BETTER["perplexity"] is False
    assert data.HIGHER_IS_BETTER["kv_bytes_physical"] is False
