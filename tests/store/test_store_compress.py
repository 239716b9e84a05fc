"""The `compress` column: stored from the record (the policy's default when the config has none),
filled by migration 0004 for rows stored before it, shown by `natsbench results`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from orchestrator.cli import main
from services.store import Store, run_key
from services.store.schema import alembic_config


def test_record_round_trip_keeps_the_protocol(store, make_config, make_record):
    prompt = make_config(policy="h2o", policy_params={"budget": 0.25}, compress="prompt")
    plain = make_config(policy="h2o", policy_params={"budget": 0.25}, seed=1)
    snap = make_config(policy="snapkv", policy_params={"budget": 0.25}, seed=2)
    for config in (prompt, plain, snap):
        assert store.record(make_record(config))
    runs = {r["seed"]: r for r in store.runs()}
    assert (runs[0]["compress"], runs[1]["compress"], runs[2]["compress"]) == ("prompt", "streaming", "prompt")
    assert runs[0]["run_key"] == run_key(prompt) != run_key({**prompt, "compress": "streaming"})
    assert runs[1]["run_key"] == run_key({**plain, "compress": "streaming"})


def test_ensure_runs_stores_the_protocol_of_planned_cells(store, make_config):
    config = make_config(policy="tova", policy_params={"budget": 0.5}, compress="context")
    statuses = store.ensure_runs("s", [config])
    assert list(statuses) == [run_key(config)]
    assert store.get_run(run_key(config))["compress"] == "context"


def test_migration_0004_gives_old_rows_the_protocol_they_ran(empty_url):
    from alembic import command

    if empty_url.startswith("sqlite:///"):
        Path(empty_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        for key, policy in (("k1", "h2o"), ("k2", "snapkv"), ("k3", "nats")):
            conn.execute(text(
                "INSERT INTO runs (run_key, model, policy, policy_params, workload, workload_params, seed, "
                f"config, code_version, status, attempts) VALUES ('{key}', 'm', '{policy}', '{{}}', 'passkey', "
                "'{}', 0, '{}', '3', 'done', 1)"))
    engine.dispose()
    with Store(empty_url) as store:
        store.upgrade()
        got = {r["run_key"]: r["compress"] for r in store.runs()}
    assert got == {"k1": "streaming", "k2": "prompt", "k3": "streaming"}


def test_results_table_shows_the_compress_column(store_url, make_config, make_record, capsys):
    with Store(store_url) as store:
        store.record(make_record(make_config(policy="h2o", policy_params={"budget": 0.25}, compress="context")))
        store.record(make_record(make_config(policy="h2o", policy_params={"budget": 0.25}, seed=1)))
    assert main(["results", "--db", store_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    col = header.index("compress")
    assert header[col - 1] == "budget"
    values = sorted(line.split()[col] for line in lines[2:4])
    assert values == ["context", "streaming"]
