"""The dashboard opens the store read-only and reads it through the Store API."""

import sqlite3

import pytest
from fixture_runs import fill_store
from sqlalchemy.engine import make_url

from dashboard import source


def test_resolve_db_url(monkeypatch):
    monkeypatch.delenv(source.DB_URL_ENV, raising=False)
    assert source.resolve_db_url(["-q", "tests"]) == source.DEFAULT_DB_URL
    monkeypatch.setenv(source.DB_URL_ENV, "sqlite:///env.sqlite")
    assert source.resolve_db_url([]) == "sqlite:///env.sqlite"
    assert source.resolve_db_url(["--db", "sqlite:///arg.sqlite"]) == "sqlite:///arg.sqlite"


def test_readonly_url_sqlite_and_postgres(tmp_path):
    ro = make_url(source.readonly_url(f"sqlite:///{tmp_path}/a.sqlite"))
    assert ro.database == f"file:{tmp_path}/a.sqlite" and ro.query == {"mode": "ro", "uri": "true"}
    pg = make_url(source.readonly_url("postgresql+psycopg://u:secret@127.0.0.1:5432/db?options=-csearch_path%3Ds1"))
    assert pg.query["options"] == "-csearch_path=s1 -c default_transaction_read_only=on"
    assert pg.password == "secret"
    assert "secret" not in source.display_url(str(pg.render_as_string(hide_password=False)))
    assert source.readonly_url("sqlite://") == "sqlite://"  # in-memory: nothing to protect


def test_load_runs_reads_every_run_read_only(filled_store):
    url, records = filled_store
    snap = source.load_runs(url)
    assert snap.problem is None
    assert len(snap.runs) == len({r["run_key"] for r in records})
    assert {s["name"] for s in snap.sweeps} == {"tiny-main", "tiny-running", "tiny-empty"}
    running = next(s for s in snap.sweeps if s["name"] == "tiny-running")
    assert running["counts"] == {"pending": 1, "running": 1, "done": 1, "failed": 0}
    # the URL the dashboard uses refuses writes at the database level
    from sqlalchemy.exc import OperationalError

    from services.store import Store

    with Store(source.readonly_url(url)) as store, pytest.raises(OperationalError, match="readonly"):
        store.ensure_sweep("written-by-the-dashboard")
    assert "written-by-the-dashboard" not in {s["name"] for s in source.load_runs(url).sweeps}


def test_load_runs_without_a_store(tmp_path):
    missing = source.load_runs(f"sqlite:///{tmp_path}/none.sqlite")
    assert missing.runs == [] and "does not exist" in missing.problem
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates the file
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    other = source.load_runs(f"sqlite:///{tmp_path}/other.sqlite")
    assert other.runs == [] and other.problem


@pytest.mark.postgres
def test_postgres_read_only(pg_url):
    fill_store(pg_url)
    snap = source.load_runs(pg_url)
    assert len(snap.runs) == 83 and snap.problem is None
    from services.store import Store

    with Store(source.readonly_url(pg_url)) as store, pytest.raises(Exception, match="read-only transaction"):
        store.ensure_sweep("written-by-the-dashboard")
