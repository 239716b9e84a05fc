"""Unreachable servers and malformed URLs fail fast with a message naming the URL and the problem."""

from __future__ import annotations

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
