"""Shared fixtures. `pg_url`: an isolated PostgreSQL schema for one test.

The server is `NATSBENCH_PG_URL` (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
Each test gets a fresh schema `nb_test_<unix time>_<random>` (dropped afterwards) and a URL whose
`options=-csearch_path=<schema>` makes every connection live in it, so parallel test runs and
leftovers never see each other. An unreachable server skips the test, or fails it when
`NATSBENCH_REQUIRE_POSTGRES=1` (CI).
"""

from __future__ import annotations

import os
import secrets
import time
import warnings

import pytest

# Triton runs on the CPU only through its interpreter, and only when TRITON_INTERPRET=1 is set
# before triton is first imported. Other tests (transformers, torch) may import triton before the
# kernel tests' own conftest runs, so it is set here, once, for the whole session.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

PG_URL_ENV = "NATSBENCH_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_SCHEMA_PREFIX = "nb_test_"
_STALE_AFTER_S = 6 * 3600  # schemas of crashed runs older than this are dropped at session start


def _pg_base_url():
    from sqlalchemy.engine import make_url

    url = make_url(os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _admin_engine(url):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


@pytest.fixture(scope="session")
def _pg_server():
    """The base PostgreSQL URL when the server answers, else the reason it does not."""
    from sqlalchemy import text

    url = _pg_base_url()
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            now = int(time.time())
            stale = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": _SCHEMA_PREFIX + "%"}
            ).scalars()
            for name in list(stale):
                stamp = name[len(_SCHEMA_PREFIX) :].split("_")[0]
                if stamp.isdigit() and now - int(stamp) > _STALE_AFTER_S:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        yield url, None
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable server"
        yield None, f"PostgreSQL at {url.render_as_string(hide_password=True)} is not usable: {exc}"
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(_pg_server):
    """A URL (str) of a fresh, empty PostgreSQL schema for this test; dropped afterwards."""
    from sqlalchemy import text

    base, problem = _pg_server
    if problem is not None:
        if os.environ.get("NATSBENCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{problem} (NATSBENCH_REQUIRE_POSTGRES=1)")
        pytest.skip(problem)
    schema = f"{_SCHEMA_PREFIX}{int(time.time())}_{secrets.token_hex(4)}"
    engine = _admin_engine(base)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        try:
            with engine.connect() as conn:
                conn.execute(text("SET lock_timeout = '10s'"))
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        except Exception as exc:  # noqa: BLE001 - a leftover schema is dropped by a later session
            warnings.warn(f"could not drop test schema {schema}: {exc}", stacklevel=1)
        engine.dispose()
