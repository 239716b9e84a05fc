"""Store fixtures: every store test runs on SQLite (a temporary file) and on PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path) -> str:
    """URL of an empty database: a new SQLite file, or a fresh PostgreSQL schema (`pg_url`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'natsbench.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store_url(empty_url) -> str:
    """URL of a database holding the current schema."""
    from services.store import Store

    with Store(empty_url) as store:
        store.upgrade()
    return empty_url


@pytest.fixture
def store(store_url):
    from services.store import Store

    with Store(store_url) as opened:
        yield opened


def _make_config(seed: int = 0, **overrides) -> dict:
    """A valid cell config (docs/DESIGN.md)."""
    config = {
        "model": "gpt-tiny",
        "policy": "streaming_llm",
        "policy_params": {"budget": 0.25, "sink": 4},
        "workload": "passkey",
        "workload_params": {"context_length": 256},
        "n_examples": 8,
        "seed": seed,
        "device": "cpu",
        "dtype": "float32",
    }
    config.update(overrides)
    return config


def _make_record(config: dict, status: str = "done", **fields) -> dict:
    """A finished run record for `config` (the shape services.evaluation.run_cell returns)."""
    from services.store import run_key

    record = {
        **config,
        "run_key": run_key(config),
        "status": status,
        "error": None if status == "done" else "RuntimeError: out of memory",
        "attempts": 1,
        "environment": {"host": "test", "torch": "2.13.0", "device": "cpu"},
        "accuracy": 0.5 if status == "done" else None,
        "kv_bytes_physical": 123_456,
        "kv_bytes_full": 500_000,
        "kept_fraction": 0.25,
        "ttft_s": 0.01,
        "tpot_s": 0.002,
        "tokens_per_s": 500.0,
        "peak_memory_bytes": 10_000_000,
        "extras": {"per_example": [1, 0, 1]},
    }
    record.update(fields)
    return record


@pytest.fixture
def make_config():
    """make_config(seed=0, **overrides) -> a valid cell config."""
    return _make_config


@pytest.fixture
def make_record():
    """make_record(config, status="done", **fields) -> a finished run record."""
    return _make_record
