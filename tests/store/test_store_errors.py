"""Unreachable servers and malformed URLs fail fast with a message naming the URL and the problem."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest

from services.store import Store, StoreError


def test_unreachable_postgresql_names_url_masks_password_and_is_fast():
    url = "postgresql://postgres:s3cret@127.0.0.1:1/test"  # port 1: nothing listens
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        Store(url).runs()
    message = str(info.value)
    assert time.monotonic() - start < 10
    assert "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/test" in message
    assert "connection refused" in message and "s3cret" not in message


def test_silent_postgresql_times_out_in_seconds():
    # A server that accepts TCP connections but never answers: connect_timeout, not a hang.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(
            StoreError,
            match=rf"cannot connect to postgresql\+psycopg://postgres@127.0.0.1:{port}/test: .*timeout",
        ):
            Store(f"postgresql://postgres@127.0.0.1:{port}/test").upgrade()
        assert time.monotonic() - start < 15


def test_missing_postgresql_database_is_named(pg_url):
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(database="nb_no_such_database").render_as_string(hide_password=False)
    with pytest.raises(
        StoreError,
        match=r'cannot connect to .*nb_no_such_database.*database "nb_no_such_database" does not exist',
    ):
        Store(url).upgrade()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("not a url", r"malformed database URL 'not a url'"),
        (
            "postgresql+psycopg://u:pw@host:notaport/db",
            r"malformed database URL 'postgresql\+psycopg://u:\*\*\*@host:notaport/db'",
        ),
        ("mysql://u@h/db", r"unsupported database 'mysql'.*allowed: sqlite, postgresql"),
        ("sqlite://", r"names no file"),
        ("postgresql:///db", r"names no host"),
        ("", r"empty database URL"),
    ],
)
def test_malformed_urls(url, expected):
    with pytest.raises(StoreError, match=expected) as info:
        Store(url)
    assert "pw" not in str(info.value) and "expected sqlite:///" in str(info.value)


def test_sqlite_folder_that_cannot_exist(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the folder"):
        Store(f"sqlite:///{tmp_path / 'file' / 'sub' / 'x.sqlite'}")


def test_sqlite_parent_folder_is_created(tmp_path):
    path = tmp_path / "a" / "b" / "store.sqlite"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
    assert path.is_file()


def test_sqlite_writer_waits_for_a_held_write_lock(tmp_path, make_config, make_record):
    path = tmp_path / "store.sqlite"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock for a while
        release = threading.Timer(1.0, lambda: other.execute("COMMIT"))
        release.start()
        start = time.monotonic()
        assert store.record(make_record(make_config())) is True  # waited (busy timeout), no error
        waited = time.monotonic() - start
        release.join()
        other.close()
        assert waited >= 0.9 and store.row_counts()["runs"] == 1
