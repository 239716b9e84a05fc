"""The Store repository on SQLite and PostgreSQL: idempotent writes, compare-and-set, reads."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from services.store import RUN_FIELDS, Store, StoreError


def test_ensure_sweep_is_idempotent_and_keeps_the_latest_spec(store):
    first = store.ensure_sweep("grid", {"models": ["a"]})
    assert store.ensure_sweep("grid", {"models": ["a", "b"]}) == first
    assert store.ensure_sweep("grid") == first  # no spec: keeps the stored one
    [sweep] = store.sweeps()
    assert sweep["name"] == "grid" and sweep["spec"] == {"models": ["a", "b"]}
    assert sweep["total"] == 0 and datetime.fromisoformat(sweep["created_at"]).tzinfo is not None
    assert store.row_counts()["sweeps"] == 1


def test_ensure_runs_inserts_pending_once_and_reports_status(store, make_config, make_record):
    configs = [make_config(seed=s) for s in range(5)]
    statuses = store.ensure_runs("grid", configs)
    assert sorted(statuses.values()) == ["pending"] * 5
    store.record(make_record(configs[0]))
    again = store.ensure_runs("grid", configs + configs)  # repeated configs: still one row each
    assert again[make_record(configs[0])["run_key"]] == "done"
    assert sorted(again.values()) == ["done"] + ["pending"] * 4
    assert store.row_counts() == {"sweeps": 1, "runs": 5, "sweep_runs": 5}


def test_two_sweeps_share_a_cell_without_a_second_row(store, make_config):
    store.ensure_runs("a", [make_config(seed=0), make_config(seed=1)])
    store.ensure_runs("b", [make_config(seed=1), make_config(seed=2)])
    assert store.row_counts()["runs"] == 3
    assert [r["seed"] for r in store.runs(sweep="b")] == [1, 2]
    assert {r["sweep"] for r in store.runs(sweep="b")} == {"b"}
    assert store.status_counts("a")["pending"] == 2 and store.status_counts()["pending"] == 3


def test_claim_is_compare_and_set(store_url, store, make_config):
    key = next(iter(store.ensure_runs("grid", [make_config()])))
    with Store(store_url) as other:
        assert store.claim(key) is True
        assert other.claim(key) is False  # already running
    run = store.get_run(key)
    assert run["status"] == "running" and run["attempts"] == 1 and run["started_at"] is not None
    assert store.claim("0" * 64) is False


def test_concurrent_claimers_exactly_one_wins(store_url, store, make_config):
    keys = list(store.ensure_runs("grid", [make_config(seed=s) for s in range(20)]))
    stores = [Store(store_url) for _ in range(4)]
    wins: list[list[str]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def claim_all(i: int) -> None:
        barrier.wait()
        wins[i] = [k for k in keys if stores[i].claim(k)]

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    claimed = [k for w in wins for k in w]
    assert sorted(claimed) == sorted(keys)  # every key won once, none twice
    assert store.status_counts()["running"] == 20


def test_record_creates_missing_row_and_duplicates_never_add_one(store, make_config, make_record):
    record = make_record(make_config(), sweep="grid", kv_bytes_physical=5_000_000_000)
    assert store.record(record) is True
    assert store.record(record) is False  # a retry of a finished cell
    assert store.record({**record, "status": "failed", "error": "late"}) is False  # late duplicate
    [run] = store.runs()
    assert run["status"] == "done" and run["error"] is None and run["accuracy"] == 0.5
    assert run["kv_bytes_physical"] == 5_000_000_000  # BigInteger
    assert run["sweep"] == "grid" and store.row_counts()["runs"] == 1


def test_done_overwrites_failed_but_not_the_reverse(store, make_config, make_record):
    config = make_config()
    key = next(iter(store.ensure_runs("grid", [config])))
    assert store.claim(key)
    assert store.record(make_record(config, status="failed"))
    assert store.get_run(key)["status"] == "failed"
    assert store.claim(key, retry_failed=True)
    assert store.record(make_record(config, status="done", accuracy=0.75, attempts=2))
    run = store.get_run(key)
    assert (run["status"], run["error"], run["accuracy"], run["attempts"]) == ("done", None, 0.75, 2)
    assert store.claim(key, retry_failed=True) is False  # done is final


def test_run_dict_has_every_field_with_db_timestamps(store, make_config, make_record):
    config = make_config(policy_params={"budget": 0.125})
    key = next(iter(store.ensure_runs("grid", [config])))
    assert store.claim(key)
    store.record(make_record(config, extras={"nested": {"x": [1, 2]}}, accuracy=float("nan")))
    [run] = store.runs(sweep="grid", status="done")
    assert tuple(run) == RUN_FIELDS
    assert run["budget"] == 0.125 and run["config"] == config and run["extras"] == {"nested": {"x": [1, 2]}}
    assert run["accuracy"] is None  # NaN is stored as missing, the same on both databases
    started, finished = (datetime.fromisoformat(run[f]) for f in ("started_at", "finished_at"))
    assert started.tzinfo is not None and started <= finished
    assert abs((finished - datetime.now(started.tzinfo)).total_seconds()) < 120


def test_release_running_moves_running_back_to_pending(store, make_config):
    keys = list(store.ensure_runs("a", [make_config(seed=s) for s in range(3)]))
    other = next(iter(store.ensure_runs("b", [make_config(seed=10)])))
    for key in [*keys[:2], other]:
        assert store.claim(key)
    assert store.release_running("a") == 2
    assert store.status_counts("a") == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    assert store.status_counts("b")["running"] == 1
    assert store.claim(keys[0])  # claimable again
    assert store.release_running() == 2


def test_filters_and_bad_input(store, make_config, make_record):
    store.ensure_runs("grid", [make_config(seed=s) for s in range(3)])
    store.record(make_record(make_config(seed=0), status="failed", sweep="grid"))
    assert [r["seed"] for r in store.runs(status=["failed", "done"])] == [0]
    assert len(store.runs(status="pending")) == 2
    with pytest.raises(ValueError, match="allowed"):
        store.runs(status="finished")
    with pytest.raises(StoreError, match="no sweep 'nope'.*grid"):
        store.runs(sweep="nope")
    with pytest.raises(ValueError, match="finished status"):
        store.record(make_record(make_config(), status="running"))
    with pytest.raises(ValueError, match="kv_bytes_physical"):
        store.record(make_record(make_config(), kv_bytes_physical="big"))
