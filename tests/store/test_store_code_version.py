"""Never-stale results in the store: every row carries the code version that made it; rows of
an older version are kept, marked and never counted as this version's results."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from services.store import Store, keys, schema


def test_new_rows_carry_this_code_version(store, make_config, make_record):
    store.ensure_runs("grid", [make_config(seed=0)])
    store.record(make_record(make_config(seed=1), sweep="grid"))
    rows = store.runs("grid")
    assert [r["code_version"] for r in rows] == [keys.CODE_VERSION] * 2


def test_old_version_rows_are_kept_but_not_counted_and_get_new_keys(store, make_config, make_record,
                                                                     monkeypatch):
    configs = [make_config(seed=s) for s in range(3)]
    monkeypatch.setattr(keys, "CODE_VERSION", "1")
    old = store.ensure_runs("grid", configs)
    store.record(make_record(configs[0], sweep="grid"))
    store.record(make_record(configs[1], status="failed", sweep="grid"))
    monkeypatch.setattr(keys, "CODE_VERSION", "2")
    new = store.ensure_runs("grid", configs)
    # a new code version: new keys, new pending rows; the old rows stay as they were
    assert not set(old) & set(new) and set(new.values()) == {"pending"}
    assert store.status_counts("grid") == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    assert store.status_counts() == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    [sweep] = store.sweeps()
    assert sweep["counts"] == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    assert sweep["total"] == 3 and sweep["stale"] == 3
    by_version = {}
    for row in store.runs("grid"):
        by_version.setdefault(row["code_version"], []).append(row["status"])
    assert {v: sorted(s) for v, s in by_version.items()} == {"1": ["done", "failed", "pending"], "2": ["pending"] * 3}


def test_upgrade_from_0001_marks_existing_rows_as_code_version_1(empty_url):
    from alembic import command

    store = Store(empty_url)
    with store._engine.begin() as conn:  # the schema of revision 0001 with one stored run
        config = schema.alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(text(
            "INSERT INTO runs (run_key, model, policy, policy_params, workload, workload_params, seed, config, "
            "status, attempts) VALUES ('k1', 'm', 'full', '{}', 'passkey', '{}', 0, '{}', 'done', 1)"))
    before, after = store.upgrade()
    assert before == "0001" and after == schema.HEAD_REVISION
    run = store.get_run("k1")
    assert run["code_version"] == "1" and run["status"] == "done"
    store.close()


@pytest.mark.parametrize("field,value,message", [
    ("seed", -1, "'seed': -1 is out of range; allowed: integers in [0, 2147483647]"),
    ("seed", 3_000_000_000, "'seed': 3000000000 is out of range"),
    ("n_examples", 0, "'n_examples': 0 is out of range"),
    ("device", "gpu", "'device': unknown device 'gpu'; allowed: cpu, cuda, cuda:N, auto"),
    ("dtype", "int8", "'dtype': unknown dtype 'int8'; allowed: float32, bfloat16, float16"),
])
def test_store_refuses_a_config_the_columns_cannot_hold(store, make_config, field, value, message):
    with pytest.raises(ValueError, match="cell config field " + message.replace("[", r"\[").replace("]", r"\]")):
        store.ensure_runs("grid", [make_config(**{field: value})])
    assert store.row_counts()["runs"] == 0


def test_results_table_marks_rows_of_older_code_versions(store_url, make_config, make_record, monkeypatch,
                                                          capsys):
    from orchestrator.cli import main

    with Store(store_url) as store:
        monkeypatch.setattr(keys, "CODE_VERSION", "1")
        store.record(make_record(make_config(seed=0), sweep="grid", accuracy=0.25))
        monkeypatch.setattr(keys, "CODE_VERSION", "2")
        store.record(make_record(make_config(seed=0), sweep="grid", accuracy=0.75))
    monkeypatch.setattr("services.store.CODE_VERSION", "2")
    assert main(["results", "--db", store_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert "code" in header
    rows = lines[2:-1]
    old = [line for line in rows if "1 (old)" in line]
    assert len(rows) == 2 and len(old) == 1 and "0.25" in old[0]
    assert [line for line in rows if line not in old][0].split()[header.index("code")] == "2"
    assert lines[-1].startswith("(2 runs; 1 of an older code version, marked (old)")
    assert main(["results", "--db", store_url, "--format", "json"]) == 0
    assert sorted(r["code_version"] for r in json.loads(capsys.readouterr().out)) == ["1", "2"]


def test_db_status_counts_older_code_versions_apart(store_url, make_config, make_record, monkeypatch, capsys):
    from orchestrator.cli import main

    with Store(store_url) as store:
        monkeypatch.setattr(keys, "CODE_VERSION", "1")
        store.record(make_record(make_config(seed=0), sweep="grid"))
        monkeypatch.setattr(keys, "CODE_VERSION", "2")
        store.ensure_runs("grid", [make_config(seed=0)])
    monkeypatch.setattr("services.store.CODE_VERSION", "2")
    assert main(["db", "status", "--db", store_url]) == 0
    runs_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("runs:")][0]
    assert runs_line == "runs:    pending 1, running 0, done 0, failed 0 (code version 2); 1 of older code versions"
