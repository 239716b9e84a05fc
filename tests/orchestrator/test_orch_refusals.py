"""Bad input to `natsbench sweep` (and the store commands) is refused up front: exit 2, one line
on stderr naming the input and what is allowed, the store untouched, Ray never started.

Ray is kept out by replacing `orchestrator.run.init_ray` with a function that fails the test;
"store untouched" is a new SQLite path that must not exist afterwards, or a foreign file whose
bytes (hash) must not change.
"""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import time

import pytest
import torch
import yaml

from orchestrator.cli import main
from services.model_files import ModelFileError, check_model_folder


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import orchestrator.run

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for an input that should have been refused")

    monkeypatch.setattr(orchestrator.run, "init_ray", refuse)
    monkeypatch.delenv("NATSBENCH_CELL_RUNNER", raising=False)  # the real runner's model checks


def _sweep_file(tmp_path, model: str = "random:tiny-gpt", **resources) -> str:
    spec = {
        "name": "refused",
        "models": [{"name": model}],
        "policies": [{"name": "full"}],
        "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}],
        "seeds": [0],
        "resources": {"workers": 1, **resources},
    }
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI, assert exit 2 with exactly one line on stderr, return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- models

def _gpt_folder(path):
    from nats_model.models.gpt import GPT, GPTConfig

    GPT(GPTConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=64)).save_pretrained(path)
    return path


class _Payload:
    """Unpickling this would call print(): code in a pickle, what the restricted loader refuses."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("model, expected", [
    ("/no/such/model/folder", "models[0].name: model '/no/such/model/folder' not found"),
    ("random:tiny-gpx", "models[0].name: unknown random test model 'random:tiny-gpx'; allowed: random:tiny-gpt"),
])
def test_unknown_models_are_refused_before_the_store_or_ray(tmp_path, capsys, model, expected):
    db = tmp_path / "store.sqlite"
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path, model), "--db", f"sqlite:///{db}", "--no-progress"])
    assert expected in line
    assert not db.exists()


def test_truncated_safetensors_and_corrupt_config_are_named(tmp_path, capsys):
    folder = _gpt_folder(tmp_path / "gpt")
    check_model_folder(folder)  # intact: accepted
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    db = tmp_path / "store.sqlite"
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path, str(folder)), "--db", f"sqlite:///{db}"])
    assert f"{weights} is truncated" in line and not db.exists()
    weights.write_bytes(b"\x05\x00")  # shorter than the header length itself
    with pytest.raises(ModelFileError, match="truncated or not a safetensors file"):
        check_model_folder(folder)

    weights.write_bytes(data)
    (folder / "config.json").write_text('{"n_layer": 1,,}')
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path, str(folder)), "--db", f"sqlite:///{db}"])
    assert f"{folder / 'config.json'} is not valid JSON" in line and not db.exists()
    # the eval command loads through the same check: one line naming the file, exit 2
    line = _refused(capsys, ["eval", "--model", str(folder), "--policy", "full", "--workload", "passkey"])
    assert "config.json is not valid JSON" in line


def test_a_pickle_with_code_is_refused_by_the_restricted_loader_in_one_line(tmp_path, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    torch.save({"model.embed_tokens.weight": _Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="refused by the restricted loader"):
        check_model_folder(folder)
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path, str(folder)), "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert "pytorch_model.bin was refused by the restricted loader (torch.load weights_only=True)" in line
    assert "GLOBAL print" in line and "add_safe_globals" not in line  # names the global, no advice to allow it
    assert "this must never run" not in capsys.readouterr().out

    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, folder / "pytorch_model.bin")
    assert check_model_folder(folder)["model_type"] == "llama"  # plain tensors: accepted
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert check_model_folder(folder)["model_type"] == "llama"  # the legacy format too (not memory-mappable)
    torch.save({"w": _Payload()}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="refused by the restricted loader"):
        check_model_folder(folder)
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match="pytorch_model.bin is corrupt or truncated"):
        check_model_folder(folder)


# ---------------------------------------------------------------- resources and Ray address

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_the_local_ray_cannot_give_are_refused(tmp_path, capsys):
    db = tmp_path / "store.sqlite"
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path, gpus_per_worker=1), "--db", f"sqlite:///{db}"])
    assert "resources.gpus_per_worker = 1 cannot be met by the built-in local Ray" in line
    assert "machine has 0 GPUs" in line and not db.exists()


def test_an_address_where_nothing_listens_is_refused_within_seconds(tmp_path, capsys):
    db = tmp_path / "store.sqlite"
    port = _free_port()
    t0 = time.monotonic()
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path), "--db", f"sqlite:///{db}", "--address",
                             f"127.0.0.1:{port}"])
    assert time.monotonic() - t0 < 10
    assert f"nothing answers at 127.0.0.1:{port}" in line and "ray start --head" in line
    assert not db.exists()


@pytest.mark.parametrize("address, expected", [
    ("http://127.0.0.1:8265", "is a Ray Jobs API (dashboard) address, the form `natsbench submit` takes"),
    ("127.0.0.1", "malformed --address '127.0.0.1'; expected HOST:PORT"),
    ("127.0.0.1:99999", "malformed --address"),
    ("ray://", "malformed --address"),
    ("a b:1", "malformed --address"),
])
def test_malformed_and_jobs_api_addresses_are_refused(tmp_path, capsys, address, expected):
    db = tmp_path / "store.sqlite"
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path), "--db", f"sqlite:///{db}", "--address", address])
    assert expected in line and not db.exists()


# ---------------------------------------------------------------- --db

@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://", "postgresql://u@h:port/db", "not a url"])
@pytest.mark.parametrize("command", [["sweep", "CFG"], ["results"], ["db", "status"], ["db", "upgrade"]])
def test_malformed_or_unsupported_db_urls_exit_2(tmp_path, capsys, url, command):
    argv = [_sweep_file(tmp_path) if a == "CFG" else a for a in command]
    line = _refused(capsys, [*argv, "--db", url])
    assert "--db" in line or "database URL" in line or "unsupported database" in line
    assert "sqlite:///PATH/TO/FILE.sqlite" in line or "allowed: sqlite, postgresql" in line


def _foreign_sqlite(path, table: str = "runs"):
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute(f"INSERT INTO {table} (owner) VALUES ('another application')")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("table", ["runs", "experiments"])
def test_a_foreign_sqlite_file_is_never_written_not_even_its_journal_mode(tmp_path, capsys, table):
    db = _foreign_sqlite(tmp_path / "other-app.sqlite", table)
    url = f"sqlite:///{db}"
    before = _sha(db)
    for argv in (["sweep", _sweep_file(tmp_path), "--db", url, "--no-progress"], ["db", "upgrade", "--db", url]):
        line = _refused(capsys, argv)
        assert "is not a natsbench store and not empty" in line and f"['{table}']" in line
        assert "nothing was written" in line
        assert _sha(db) == before
    # read-only commands: refused or reporting, and still nothing written (no switch to WAL)
    assert main(["results", "--db", url]) == 2
    assert main(["db", "status", "--db", url]) == 2
    assert main(["sweep", _sweep_file(tmp_path), "--db", url, "--dry-run"]) == 0
    capsys.readouterr()
    assert _sha(db) == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute(f"SELECT owner FROM {table}").fetchall() == [("another application",)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [(table,)]
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path, capsys):
    db = tmp_path / "notes.sqlite"
    db.write_text("these are my notes, not a database\n" * 200)
    before = _sha(db)
    line = _refused(capsys, ["sweep", _sweep_file(tmp_path), "--db", f"sqlite:///{db}"])
    assert "--db" in line and "not a database" in line
    assert _sha(db) == before


def test_a_new_store_is_created_in_wal_mode(tmp_path, capsys):
    db = tmp_path / "new.sqlite"
    assert main(["db", "upgrade", "--db", f"sqlite:///{db}"]) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.postgres
def test_a_foreign_postgresql_schema_gets_no_natsbench_tables(pg_url, tmp_path, capsys):
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE runs (id SERIAL PRIMARY KEY, owner TEXT)"))
    for argv in (["db", "upgrade", "--db", pg_url], ["sweep", _sweep_file(tmp_path), "--db", pg_url]):
        line = _refused(capsys, argv)
        assert "is not a natsbench store and not empty" in line and "['runs']" in line
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["runs"]
    engine.dispose()


def test_demo_refuses_a_foreign_database_in_one_line(tmp_path, capsys):
    db = _foreign_sqlite(tmp_path / "other-app.sqlite")
    before = _sha(db)
    line = _refused(capsys, ["demo", "--config", _sweep_file(tmp_path), "--db", f"sqlite:///{db}"])
    assert "is not a natsbench store and not empty" in line
    assert _sha(db) == before


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:6379", "is a cluster (GCS) address, the form `natsbench sweep --address` takes"),
    ("not an address", "is malformed; `natsbench submit` talks to the Ray Jobs API"),
    ("http://127.0.0.1:99999", "malformed --address"),
    ("http://127.0.0.1:PORT", "nothing answers at 127.0.0.1:PORT"),
])
def test_submit_refuses_addresses_that_are_not_a_live_jobs_api(tmp_path, capsys, address, expected):
    port = str(_free_port())
    address, expected = address.replace("PORT", port), expected.replace("PORT", port)
    t0 = time.monotonic()
    line = _refused(capsys, ["submit", _sweep_file(tmp_path), "--address", address])
    assert expected in line and time.monotonic() - t0 < 10


@pytest.mark.parametrize("lease, env, expected", [
    ("0", None, "--lease: the lease must be a number of seconds in (0, 86400], got 0.0"),
    ("-5", None, "--lease: the lease must be a number of seconds in (0, 86400]"),
    (None, "soon", "--lease: $NATSBENCH_LEASE_S must be a number of seconds in (0, 86400], got 'soon'"),
])
def test_a_nonsense_lease_is_refused(tmp_path, capsys, monkeypatch, lease, env, expected):
    if env is not None:
        monkeypatch.setenv("NATSBENCH_LEASE_S", env)
    db = tmp_path / "store.sqlite"
    argv = ["sweep", _sweep_file(tmp_path), "--db", f"sqlite:///{db}", *(["--lease", lease] if lease else [])]
    assert expected in _refused(capsys, argv) and not db.exists()
