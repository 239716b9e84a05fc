"""Fixtures of the dashboard tests: a SQLite store filled with the realistic fixture."""

from __future__ import annotations

import pytest
from fixture_runs import fill_store, fixture_records, other_model_records


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory) -> tuple[str, list[dict]]:
    """(URL, records) of a SQLite store holding the fixture runs, written through the Store API."""
    path = tmp_path_factory.mktemp("dashboard_store") / "natsbench.sqlite"
    url = f"sqlite:///{path}"
    return url, fill_store(url)


@pytest.fixture(scope="session")
def filled_store_models(tmp_path_factory) -> tuple[str, list[dict]]:
    """(URL, records) of a store with the fixture runs plus three more models (four in all)."""
    path = tmp_path_factory.mktemp("dashboard_store_models") / "natsbench.sqlite"
    url = f"sqlite:///{path}"
    return url, fill_store(url, fixture_records() + other_model_records())


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> tuple[str, list[dict]]:
    """(URL, records) of a store holding results shaped like `make demo`'s (fixture_runs.demo_records)."""
    from fixture_runs import demo_records

    path = tmp_path_factory.mktemp("dashboard_store_demo") / "natsbench.sqlite"
    url = f"sqlite:///{path}"
    return url, fill_store(url, demo_records())


@pytest.fixture(scope="session")
def demo_sweep_store(tmp_path_factory) -> tuple[str, list[dict]]:
    """(URL, records) of a store the demo's own sweep filled: `natsbench demo` on configs/demo.yaml with its
    examples capped (demo_sweep.py), once per session; every test of the demo's results shares it."""
    from demo_sweep import capped_config, run_demo_sweep

    folder = tmp_path_factory.mktemp("demo_sweep")
    url = f"sqlite:///{folder / 'natsbench.sqlite'}"
    return url, run_demo_sweep(url, capped_config(folder / "demo.yaml"))["records"]
