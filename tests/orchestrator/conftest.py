"""Fixtures of the orchestrator tests: ONE local Ray cluster per test session, on 127.0.0.1.

The cluster is started lazily by the first test that asks for `ray_cluster` (2 CPUs, no
dashboard). Its workers import the controllable runner `orch_fake_runner` from this folder
(PYTHONPATH is set before Ray starts, so every worker process inherits it) and log each cell
they execute to a session file (`NATSBENCH_FAKE_LOG`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Must be set before ray is imported anywhere in this process.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")  # busy 2-core CI machines

import pytest  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from orch_helpers import FAKE_RUNNER, REPO  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """{"address": GCS address, "log": fake-runner log path}; Ray stays up for the session."""
    log = tmp_path_factory.mktemp("fake-runner") / "calls.jsonl"
    os.environ["NATSBENCH_FAKE_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(REPO), os.environ.get("PYTHONPATH")) if p)
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    address = ray.get_runtime_context().gcs_address
    yield {"address": address, "log": log}
    ray.shutdown()


@pytest.fixture
def fake_runner(monkeypatch, ray_cluster):
    """Route cells to the fake runner for this test (the driver reads NATSBENCH_CELL_RUNNER)."""
    monkeypatch.setenv("NATSBENCH_CELL_RUNNER", FAKE_RUNNER)
    return ray_cluster


@pytest.fixture
def orch_pg_url(request):
    """An isolated PostgreSQL URL: the shared `pg_url` fixture when tests/conftest.py has it,
    else a fresh schema on $NATSBENCH_PG_URL dropped afterwards (skip, or fail under
    NATSBENCH_REQUIRE_POSTGRES=1, when the server is unreachable)."""
    try:
        yield request.getfixturevalue("pg_url")
        return
    except pytest.FixtureLookupError:
        pass
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("NATSBENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"orch_{uuid.uuid4().hex[:12]}"
    try:
        engine = sa.create_engine(base)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("NATSBENCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {base} unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {base} unreachable: {exc}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
