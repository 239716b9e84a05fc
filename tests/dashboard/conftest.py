"""Fixtures of the dashboard tests: a SQLite store filled with the realistic fixture."""

from __future__ import annotations

import pytest
from fixture_runs import fill_store


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory) -> tuple[str, list[dict]]:
    """(URL, records) of a SQLite store holding the fixture runs, written through the Store API."""
    path = tmp_path_factory.mktemp("dashboard_store") / "natsbench.sqlite"
    url = f"sqlite:///{path}"
    return url, fill_store(url)
