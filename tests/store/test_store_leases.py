"""Leases of running runs (SQLite and PostgreSQL): a live lease is never taken, an expired one is;
renewal keeps a lease live; release and record touch only what they should; migration 0003
expires the runs an older driver left running."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from services.store import Store, run_key
from services.store.schema import alembic_config, head_revision


def _keys(store: Store, make_config, n: int, sweep: str = "leases") -> list[str]:
    return sorted(store.ensure_runs(sweep, [make_config(seed=s) for s in range(n)]))


def test_a_live_lease_is_never_taken_and_an_expired_one_is(store, make_config):
    key = _keys(store, make_config, 1)[0]
    assert store.claim(key, owner="driver-a", lease_s=30)
    assert store.claim(key, owner="driver-b", lease_s=30) is False  # live: refused
    state = store.leases([key])[key]
    assert state == {"status": "running", "lease_owner": "driver-a", "lease_live": True}

    other = next(k for k in _keys(store, make_config, 2) if k != key)
    assert store.claim(other, owner="driver-a", lease_s=0.2)
    time.sleep(0.5)  # past the expiry on the database clock (SQLite: millisecond resolution)
    assert store.leases([other])[other]["lease_live"] is False
    assert store.claim(other, owner="driver-b", lease_s=30)  # expired: taken over
    row = store.get_run(other)
    assert row["status"] == "running" and row["attempts"] == 2
    assert store.leases([other])[other] == {"status": "running", "lease_owner": "driver-b", "lease_live": True}


def test_renewal_keeps_a_short_lease_live(store, make_config):
    key = _keys(store, make_config, 1)[0]
    assert store.claim(key, owner="driver-a", lease_s=0.6)
    deadline = time.monotonic() + 1.5  # more than twice the lease
    while time.monotonic() < deadline:
        assert store.renew_leases("driver-a", lease_s=0.6) == 1
        assert store.claim(key, owner="driver-b", lease_s=30) is False
        time.sleep(0.15)
    assert store.renew_leases("driver-b", lease_s=30) == 0  # holds nothing
    time.sleep(0.9)  # renewal stopped: the lease runs out
    assert store.claim(key, owner="driver-b", lease_s=30)
    assert store.renew_leases("driver-a", lease_s=0.6) == 0  # a took-over run is no longer a's


def test_release_moves_back_only_the_given_owners_runs(store, make_config):
    keys = _keys(store, make_config, 3)
    assert store.claim(keys[0], owner="driver-a") and store.claim(keys[1], owner="driver-a")
    assert store.claim(keys[2], owner="driver-b")
    assert store.release_running("leases", owner="driver-a") == 2
    states = store.leases(keys)
    assert [states[k]["status"] for k in keys] == ["pending", "pending", "running"]
    assert states[keys[0]]["lease_owner"] is None and states[keys[2]]["lease_owner"] == "driver-b"
    assert store.claim(keys[0], owner="driver-b")  # pending again: anyone may claim


def test_a_finished_run_holds_no_lease(store, make_config, make_record):
    config = make_config(seed=0)
    key = _keys(store, make_config, 1)[0]
    assert store.claim(key, owner="driver-a", lease_s=30)
    assert store.record(make_record(config, sweep="leases"))
    assert store.leases([key])[key] == {"status": "done", "lease_owner": None, "lease_live": False}
    assert store.renew_leases("driver-a") == 0
    assert store.claim(key, owner="driver-b") is False  # done is final


def test_claim_refuses_a_nonsense_lease(store, make_config):
    key = _keys(store, make_config, 1)[0]
    for bad in (0, -1, float("nan"), True, "60"):
        with pytest.raises(ValueError, match="lease_s"):
            store.claim(key, lease_s=bad)
    assert store.get_run(key)["status"] == "pending"


def test_migration_0003_expires_runs_left_running_by_an_older_driver(empty_url, make_config):
    from alembic import command

    if empty_url.startswith("sqlite:///"):
        Path(empty_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.execute(text(
            "INSERT INTO runs (run_key, model, policy, policy_params, workload, workload_params, seed, "
            "config, code_version, status, attempts) VALUES ('k1', 'm', 'full', '{}', 'passkey', '{}', 0, "
            "'{}', '1', 'running', 1)"))
    engine.dispose()
    with Store(empty_url) as store:
        assert store.upgrade()[1] == head_revision()
        assert store.leases(["k1"])["k1"]["lease_live"] is False
        assert store.claim("k1", owner="driver-new")
        assert store.get_run("k1")["attempts"] == 2


def test_a_record_under_a_lost_lease_writes_nothing_and_the_live_owners_is_kept(store, make_config, make_record):
    """Driver A stalls past its lease, driver B takes the run over: A's late result is refused
    before and after B's, B's is the one stored; recording is a compare-and-set on the owner."""
    config = make_config(seed=7)
    _keys(store, make_config, 8)
    key = run_key(config)
    assert store.claim(key, owner="driver-a", lease_s=0.2)
    time.sleep(0.5)  # A is paused past its lease
    assert store.claim(key, owner="driver-b", lease_s=30)

    late_a = make_record(config, accuracy=0.1, environment={"host": "a"})
    assert store.record(late_a, owner="driver-a") is False  # B holds the lease now
    row = store.get_run(key)
    assert (row["status"], row["accuracy"]) == ("running", None)
    assert store.leases([key])[key] == {"status": "running", "lease_owner": "driver-b", "lease_live": True}

    assert store.record(make_record(config, accuracy=0.9, environment={"host": "b"}), owner="driver-b")
    assert store.record(late_a, owner="driver-a") is False  # and after B finished
    assert store.record(make_record(config, accuracy=0.9), owner="driver-b") is False  # a done row stays
    row = store.get_run(key)
    assert (row["status"], row["accuracy"], row["environment"]["host"]) == ("done", 0.9, "b")
    assert len([r for r in store.runs() if r["run_key"] == key]) == 1


def test_a_lease_owner_records_its_run_even_after_its_lease_lapsed_if_nobody_took_it(
        store, make_config, make_record):
    config = make_config(seed=1)
    _keys(store, make_config, 2)
    key = run_key(config)
    assert store.claim(key, owner="driver-a", lease_s=0.2)
    time.sleep(0.5)  # expired, but still A's: nobody claimed it
    assert store.record(make_record(config, status="failed"), owner="driver-a") is True
    row = store.get_run(key)
    assert row["status"] == "failed" and store.leases([key])[key]["lease_owner"] is None
    # a released run (pending, no owner) is not A's to record any more
    assert store.claim(key, owner="driver-a", retry_failed=True, lease_s=30)
    assert store.release_running(owner="driver-a") == 1
    assert store.record(make_record(config), owner="driver-a") is False
    assert store.get_run(key)["status"] == "pending"
