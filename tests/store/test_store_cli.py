"""`natsbench db upgrade|status` and `natsbench results` through the CLI dispatcher."""

from __future__ import annotations

import csv
import io
import json

import pytest

from orchestrator.cli import main
from services.store import RUN_FIELDS, RUN_STATUSES, Store
from services.store.schema import HEAD_REVISION


def _fill(url: str, make_config, make_record) -> None:
    with Store(url) as store:
        store.ensure_runs("grid", [make_config(seed=s) for s in range(3)])
        store.record(make_record(make_config(seed=0), sweep="grid", accuracy=0.875))
        store.record(
            make_record(make_config(seed=1), status="failed", sweep="grid", error="ValueError: bad\nline 2")
        )
        store.record(make_record(make_config(seed=9, policy="full"), sweep="other"))


def test_db_upgrade_then_status(empty_url, capsys):
    assert main(["db", "status", "--db", empty_url]) == 2
    captured = capsys.readouterr()
    assert "schema:  none" in captured.out and "natsbench db upgrade" in captured.err
    assert main(["db", "upgrade", "--db", empty_url]) == 0
    head = HEAD_REVISION
    assert f"upgraded from empty to version {head}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", empty_url]) == 0
    assert f"already at version {head}" in capsys.readouterr().out
    assert main(["db", "status", "--db", empty_url]) == 0
    out = capsys.readouterr().out
    assert f"{head} (this natsbench needs {head}: current)" in out
    assert "sweeps 0, runs 0, sweep_runs 0" in out and "pending 0, running 0, done 0, failed 0" in out


def test_db_status_counts_rows_and_statuses(store_url, make_config, make_record, capsys):
    _fill(store_url, make_config, make_record)
    assert main(["db", "status", "--db", store_url]) == 0
    out = capsys.readouterr().out
    assert "sweeps 2, runs 4, sweep_runs 4" in out and "pending 1, running 0, done 2, failed 1" in out


def test_results_json_has_every_field(store_url, make_config, make_record, capsys):
    _fill(store_url, make_config, make_record)
    assert main(["results", "--db", store_url, "--format", "json", "--sweep", "grid"]) == 0
    runs = sorted(json.loads(capsys.readouterr().out), key=lambda r: r["seed"])
    assert [tuple(r) for r in runs] == [RUN_FIELDS] * 3
    assert [(r["seed"], r["status"]) for r in runs] == [(0, "done"), (1, "failed"), (2, "pending")]
    assert runs[0]["accuracy"] == 0.875 and runs[0]["policy_params"] == {"budget": 0.25, "sink": 4}
    assert main(["results", "--db", store_url, "--format", "json", "--status", "done"]) == 0
    assert sorted(r["seed"] for r in json.loads(capsys.readouterr().out)) == [0, 9]


def test_results_csv_and_table(store_url, make_config, make_record, capsys, monkeypatch):
    _fill(store_url, make_config, make_record)
    monkeypatch.setenv("NATSBENCH_DB_URL", store_url)  # no --db: the environment names the store
    assert main(["results", "--format", "csv"]) == 0
    rows = {int(r["seed"]): r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert sorted(rows) == [0, 1, 2, 9] and tuple(rows[0]) == RUN_FIELDS
    assert json.loads(rows[0]["config"]) == make_config(seed=0) and rows[2]["accuracy"] == ""
    assert rows[1]["error"] == "ValueError: bad\nline 2"
    assert main(["results", "--sweep", "grid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["key", "sweep", "model"] and lines[-1] == "(3 runs)"
    [failed] = [line for line in lines if " failed " in line]
    [done] = [line for line in lines if " done " in line]
    assert failed.endswith("ValueError: bad") and "0.875" in done


def test_results_on_an_empty_store_exits_2(empty_url, capsys):
    assert main(["results", "--db", empty_url]) == 2
    assert "run `natsbench db upgrade --db" in capsys.readouterr().err


def test_results_unreachable_and_bad_arguments(capsys):
    assert main(["results", "--db", "postgresql://postgres:pw@127.0.0.1:1/test"]) == 1
    assert "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["results", "--status", "finished"])
    assert main(["db"]) == 2


def test_results_filters_by_every_status_the_store_has(store_url, make_config, make_record, capsys):
    from services.store import run_key

    _fill(store_url, make_config, make_record)  # seed 0 done, seed 1 failed, seed 2 pending
    with Store(store_url) as store:
        store.ensure_runs("grid", [make_config(seed=5)])
        assert store.claim(run_key(make_config(seed=2)))
    expected = {"pending": [5], "running": [2], "done": [0, 9], "failed": [1]}
    assert set(expected) == set(RUN_STATUSES)
    for status in RUN_STATUSES:
        assert main(["results", "--db", store_url, "--format", "json", "--status", status]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert sorted(r["seed"] for r in rows) == expected[status] and {r["status"] for r in rows} == {status}
